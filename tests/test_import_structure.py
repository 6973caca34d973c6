"""The parts' imports, read from the source: no circles, and each part imports only the parts below it.

The layers, top to bottom: app and lmms (the faces: command line, web UI, and the lmms-eval model, which
nothing of potwatch imports) -> bench (the benchmark harness, which
`potwatch bench` runs) -> world (the synthetic world, a data generator) -> streaming -> models -> compression
-> kernels. assets/ holds a script that draws the demo video, beside bench; cluster/ (`potwatch cluster`, stream
hosts on Ray) sits beside bench too, under the command line that starts it. The modules directly in potwatch/ (errors, threads, cgroup, arguments,
time_spec, ports) are shared leaves: anyone may import them, and they import none of the parts."""

from __future__ import annotations

import pytest

from import_graph import Edge, find_circle, import_edges, module_files

LAYERS = {"app": 0, "lmms": 0, "bench": 1, "cluster": 1, "assets": 1, "world": 2, "streaming": 3, "models": 4, "compression": 5, "kernels": 6}


def part(module: str) -> str:
    """potwatch.compression.policies.tar -> compression; potwatch.errors -> shared; potwatch -> face."""
    names = module.split(".")
    if len(names) == 1:
        return "face"
    if module == "potwatch.assets":  # the package data's locator imports nothing of potwatch: a shared leaf
        return "shared"
    if len(names) == 2 and names[1] not in LAYERS:
        return "shared"
    return names[1]


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges()


def test_the_graph_sees_imports_at_module_level_and_in_functions(edges):
    """The reading itself: known imports of both kinds are found (else the tests below would pass on an
    empty graph)."""
    found = {(e.importer, e.imported, e.in_function) for e in edges}
    assert ("potwatch.app.cli", "potwatch.bench.command", True) in found  # `bench` arguments, built on demand
    assert ("potwatch.app.cli", "potwatch.errors", False) in found
    assert ("potwatch.bench.suite", "potwatch.bench.plots", True) in found  # `from potwatch.bench import plots`
    assert len(module_files()) > 100


def test_find_circle_finds_one():
    chain = [Edge("a", "b", 1, False), Edge("b", "c", 1, True), Edge("c", "a", 1, False), Edge("c", "d", 1, False)]
    assert find_circle(chain) == chain[:3]
    assert find_circle(chain[:2] + chain[3:]) is None


def test_no_import_circles(edges):
    """Neither at module level nor through imports deferred into functions: a deferred import that closes
    a circle only hides it."""
    circle = find_circle(edges)
    assert circle is None, "import circle:\n  " + "\n  ".join(map(str, circle))


def test_every_module_belongs_to_a_known_part():
    unknown = sorted(m for m in module_files() if part(m) not in LAYERS and part(m) not in ("shared", "face"))
    assert not unknown, f"place these in LAYERS (and docs/architecture.md): {unknown}"


def test_lower_parts_never_import_upper_ones(edges):
    wrong = []
    for edge in edges:
        source, target = part(edge.importer), part(edge.imported)
        if target == "shared" or source == target:
            continue
        if source == "shared" or target == "face" or source == "face" or LAYERS[target] <= LAYERS[source]:
            wrong.append(str(edge))
    assert not wrong, "imports against the layering app -> bench -> world -> streaming -> models -> compression -> kernels:\n  " + "\n  ".join(wrong)
