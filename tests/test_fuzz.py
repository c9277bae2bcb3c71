"""Property-based fuzzing of the parsers users feed by hand: probe lines, NAME=VALUE
options, recipe YAML. Whatever the input, the result is a value or a UserError."""

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechmerge.errors import UserError
from mechmerge.merge import engine
from mechmerge.options import parse_pairs
from mechmerge.probes import Probe, parse_probe_line

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@given(st.text())
def test_any_probe_line_parses_or_is_refused(line):
    try:
        p = parse_probe_line(line, "f:1")
    except UserError as e:
        assert str(e).startswith("f:1")
    else:
        assert isinstance(p, Probe) and p.response.strip()


@given(st.dictionaries(st.sampled_from(["prompt", "response", "messages", "x"]), json_values, max_size=4))
def test_any_json_object_parses_or_is_refused(obj):
    try:
        p = parse_probe_line(json.dumps(obj), "f:1")
    except UserError:
        return
    # what parses is exactly what was written: a chat with the assistant's answer last, or the pair
    if "messages" in obj:
        assert p.messages == tuple((m["role"], m["content"]) for m in obj["messages"])
        assert len(p.messages) >= 2 and p.messages[-1][0] == "assistant" and p.response == p.messages[-1][1]
    else:
        assert (p.prompt, p.response) == (obj["prompt"], obj["response"]) and p.response.strip()


@given(st.text(), st.text(min_size=1))
def test_valid_probes_round_trip(prompt, response):
    if not response.strip():
        return
    p = parse_probe_line(json.dumps({"prompt": prompt, "response": response}), "f:1")
    assert (p.prompt, p.response) == (prompt, response)


@given(st.lists(st.text(max_size=12), max_size=5))
def test_name_value_pairs(items):
    try:
        out = parse_pairs(tuple(items), "--expert")
    except UserError:
        return
    assert len(out) == len(items) and all(f"{k}={v}" in items for k, v in out.items())


recipe_like = st.fixed_dictionaries(
    {"merge_method": st.sampled_from(["ties", "task_arithmetic", "linear", "bogus", 3])},
    optional={"models": st.lists(st.fixed_dictionaries({"model": st.text(max_size=5)},
                                                       optional={"parameters": st.dictionaries(
                                                           st.sampled_from(["weight", "density", "densty", "lambda"]),
                                                           json_values, max_size=3)}), max_size=3),
              "parameters": st.dictionaries(st.sampled_from(["lambda", "normalize", "x"]), json_values, max_size=2),
              "base_model": st.text(max_size=5)})


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(recipe_like)
def test_recipe_structures_check_or_are_refused(cfg):
    try:
        engine.check_parameter_names(cfg)
        engine.parse_config(cfg)
    except UserError:
        return
    # what passes names a supported method and only parameters that method reads (mergekit would
    # ignore a misspelt one without a word)
    known = engine.parameter_names(cfg["merge_method"])
    used = list(cfg.get("parameters") or {}) + [k for m in cfg.get("models") or [] for k in m.get("parameters") or {}]
    assert cfg["merge_method"] in engine.SUPPORTED_METHODS and set(used) <= set(known)


@settings(deadline=None, max_examples=60)
@given(st.text(max_size=200))
def test_recipe_text_loads_or_is_refused(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "r.yaml"
    p.write_text(text)
    try:
        cfg = engine.load_recipe_yaml(str(p))
    except UserError:
        return
    assert isinstance(cfg, dict) and "merge_method" in cfg and cfg == yaml.safe_load(text)
