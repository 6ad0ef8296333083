"""Property-based tests: malformed and hostile specs end in clean, field-naming errors."""

from __future__ import annotations

import copy
import math

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import TINY, assert_user_error
from varbench.orchestrator.cli import app
from varbench.sweeps.spec import SpecError, load_spec, parse_spec, printable
from varbench.workers.errors import UserError

BASE = yaml.safe_load(TINY.read_text())


def _paths(node, prefix=()):
    """Every (path, value) in the base spec, containers included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p, _ in _paths(BASE) if p]


def _deep(depth: int):
    node: object = 1
    for _ in range(depth):
        node = [node]
    return node


HOSTILE_FLAT = st.one_of(
    st.tuples(st.just("wrong type"), st.one_of(st.text(max_size=8), st.booleans(), st.none(),
                                                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))),
    st.tuples(st.just("huge"), st.sampled_from([10**30, 1e308, -(10**30), 2**63])),
    st.tuples(st.just("nan/inf"), st.sampled_from([math.nan, math.inf, -math.inf])),
    st.tuples(st.just("negative"), st.integers(max_value=-1) | st.floats(max_value=-1e-9, allow_nan=False)),
    st.tuples(st.just("unknown name"), st.text(alphabet="abcxyz_", min_size=1, max_size=12)),
)
HOSTILE = st.one_of(
    HOSTILE_FLAT,
    st.tuples(st.just("deep nesting"), st.integers(min_value=50, max_value=3000).map(_deep)),
)


def _set(d, path, value):
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), hostile=HOSTILE)
def test_mutated_specs_fail_cleanly_naming_the_field(path, hostile):
    kind, value = hostile
    event(kind)
    spec = copy.deepcopy(BASE)
    _set(spec, path, value)
    try:
        parse_spec(spec)
    except SpecError as exc:
        event("rejected")
        top = str(path[0])
        assert exc.problems and all(":" in p for p in exc.problems)
        assert any(p.startswith(top) or p.startswith("spec") for p in exc.problems), (path, exc.problems)
        return
    event("accepted (the value was valid there)")


@settings(max_examples=200, deadline=None)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=10), st.integers(), min_size=1, max_size=3))
def test_unknown_fields_are_named(extra):
    spec = copy.deepcopy(BASE)
    unknown = {k: v for k, v in extra.items() if k not in spec}
    if not unknown:
        return
    spec.update(unknown)
    try:
        parse_spec(spec)
    except SpecError as exc:
        for k in unknown:
            assert any(p.startswith(printable(str(k))) for p in exc.problems), (k, exc.problems)
    else:
        raise AssertionError("unknown fields accepted")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_loader(tmp_path, blob):
    f = tmp_path / "spec.yaml"
    f.write_bytes(blob)
    try:
        load_spec(f)
    except UserError:  # SpecError included
        event("rejected")
    else:
        raise AssertionError("random bytes made a valid spec")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), hostile=HOSTILE_FLAT)
def test_cli_exit_2_one_line_per_problem_nothing_written(tmp_path, path, hostile):
    spec = copy.deepcopy(BASE)
    _set(spec, path, hostile[1])
    try:
        parse_spec(spec)
        return  # still valid: not this test's business
    except SpecError as exc:
        n_problems = len(exc.problems)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(spec))
    work = tmp_path / "never-created"
    res = CliRunner().invoke(app, ["run", str(f), "--workdir", str(work)])
    assert_user_error(res, lines=n_problems)
    assert not work.exists()


def test_non_utf8_and_deep_yaml(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    res = CliRunner().invoke(app, ["run", str(bad)])
    assert_user_error(res, "not UTF-8")
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    res = CliRunner().invoke(app, ["run", str(deep)])
    assert_user_error(res, "nested too deeply")


def test_control_characters_in_keys_stay_on_one_line():
    spec = copy.deepcopy(BASE)
    spec["cells"] = {"\r\nx": 0}
    try:
        parse_spec(spec)
    except SpecError as exc:
        assert all("\n" not in p and "\r" not in p for p in exc.problems)
        assert any("\\x0d\\x0ax" in p for p in exc.problems)
    else:
        raise AssertionError("accepted")
