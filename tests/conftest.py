"""The fixtures every test folder shares: the tiny graph, materialized once per session, and a
private copy of it per test (helpers live in ``support``)."""

import pytest

from .support import DAY, Graph, check_results, make_resources, materialize_day, materialize_history


@pytest.fixture(scope="session")
def graph(tmp_path_factory) -> Graph:
    root = tmp_path_factory.mktemp("graph")
    resources = make_resources(root)
    assert materialize_history(resources, DAY).success
    result = materialize_day(resources, DAY)
    assert result.success
    assert all(check_results(result).values()), check_results(result)
    return Graph(root, resources)


@pytest.fixture
def graph_copy(graph, tmp_path) -> Graph:
    return graph.copy(tmp_path / "copy")
