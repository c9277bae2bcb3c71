"""What a published card and upload show: Hub ids the Hub accepts, no local paths, the server's
reason when it refuses, and exactly the files that are sent."""

import json
import re
from pathlib import Path

import pytest
import yaml

from mechmerge.errors import UserError

# an absolute path of two or more parts outside a URL
ABSOLUTE = re.compile(r"(?<![\w./:~-])/[\w.@+-]+/[\w.@+-]+")


def _front(card):
    return yaml.safe_load(card.split("---\n")[1])


def _local_model(path, license=None):
    path.mkdir(parents=True)
    if license:
        (path / "README.md").write_text(f"---\nlicense: {license}\n---\n# a model\n")
    return str(path)


def test_front_matter_names_hub_ids_only(tmp_path):
    from mechmerge.merge.card import render_card

    base, expert = _local_model(tmp_path / "base", "apache-2.0"), _local_model(tmp_path / "ft", "apache-2.0")
    cfg = {"merge_method": "task_arithmetic", "base_model": base,
           "models": [{"model": expert, "parameters": {"weight": 1.0}},
                      {"model": "someone/hub-expert@main", "parameters": {"weight": 0.5}}]}
    card = render_card("m", yaml.safe_dump(cfg), cfg)
    front = _front(card)
    assert front["base_model"] == ["someone/hub-expert"] and front["base_model_relation"] == "merge"
    assert "license" not in front  # the Hub model's license is not known here
    assert "`someone/hub-expert@main`" in card and "`ft`" in card and "base `base`" in card

    cfg["models"].pop()
    front = _front(render_card("m", yaml.safe_dump(cfg), cfg))
    assert "base_model" not in front and "base_model_relation" not in front
    assert front["license"] == "apache-2.0"  # every input declares it
    (tmp_path / "ft" / "README.md").write_text("---\nlicense: mit\n---\n")
    assert "license" not in _front(render_card("m", yaml.safe_dump(cfg), cfg))


def test_the_card_carries_no_local_paths_and_no_placeholder(scored_pair):
    from mechmerge.merge.card import render_card
    from mechmerge.recipe.build import RecipeOptions, make_recipe

    d, scores = scored_pair
    r = make_recipe(RecipeOptions(scores=str(scores), out="", strategy="share", calibrate=False, progress=False),
                    write=False)
    assert str(d) in r.text  # the recipe itself keeps them: it is the record
    card = render_card("m", r.text, r.config, json.loads(scores.read_text()))
    assert str(d) not in card and not ABSOLUTE.search(card), ABSOLUTE.search(card)
    assert ", base `base`\n- Models: `a`, `b`\n" in card and "Model `a`, probes `a.jsonl`" in card
    assert "\nbase_model: base\n" in card and "\n- model: a\n" in card  # the recipe, by folder names
    assert "https://github.com/)" not in card
    header = next(line for line in card.splitlines() if line.startswith("| unit |"))
    assert header.count("patch_in") == 1, header


def _model_dir(d: Path) -> Path:
    d.mkdir()
    for name in ("config.json", "model.safetensors", "README.md", ".hidden", "sub/.hidden", "sub/notes.txt",
                 ".cache/x.json", "sub/.dir/y.json", "mergekit_config.yml"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("{}")
    (d / "mergekit_config.yml").write_text("base_model: /home/someone/models/base\n")
    (d / "README.md").write_text("see https://huggingface.co/org/name\n")
    return d


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETtoken123")


def test_the_dry_run_lists_exactly_what_the_client_uploads(tmp_path, monkeypatch, hub_env):
    """The real client's upload_folder, stopped where its commit would start."""
    from huggingface_hub import HfApi

    from mechmerge.merge import publish as pub

    d = _model_dir(tmp_path / "out")
    sent = []

    class Stop(Exception):
        pass

    class Client(HfApi):
        def create_repo(self, **kw):
            pass

        def _validate_yaml(self, *a, **kw):  # a request to the Hub
            pass

        def _prepare_upload_folder_additions(self, *a, **kw):
            sent.extend(op.path_in_repo for op in super()._prepare_upload_folder_additions(*a, **kw))
            raise Stop("stop before the commit")

    monkeypatch.setattr(pub, "make_api", lambda: Client())
    out = []
    listed = pub.publish(pub.PublishOptions(model_dir=str(d), repo="me/m", dry_run=True), echo=out.append)
    assert [n for n, _ in listed] == ["README.md", "config.json", "mergekit_config.yml", "model.safetensors",
                                      "sub/notes.txt"]
    assert any(line == "warning: mergekit_config.yml names absolute paths on this machine (the record of the merge's "
               "inputs); they are uploaded as they are" for line in out), out
    with pytest.raises(UserError, match="stop before the commit"):
        pub.publish(pub.PublishOptions(model_dir=str(d), repo="me/m"), echo=out.append)
    assert sorted(sent) == [n for n, _ in listed]


def test_a_refused_upload_says_what_the_hub_said_without_the_token(tmp_path, monkeypatch, hub_env):
    from mechmerge.merge import publish as pub

    d = _model_dir(tmp_path / "out")
    said = []

    class Hub:
        def create_repo(self, **kw):
            pass

        def upload_folder(self, **kw):
            raise said[-1]

    monkeypatch.setattr(pub, "make_api", lambda: Hub())
    said.append(ValueError('Invalid metadata in README.md.\n- "base_model" with value "/home/me/base" is not a '
                           'valid model id'))
    with pytest.raises(UserError) as e:
        pub.publish(pub.PublishOptions(model_dir=str(d), repo="me/m"), echo=lambda s: None)
    assert 'Invalid metadata in README.md. - "base_model" with value "/home/me/base" is not a valid model id' in str(
        e.value)
    import httpx2  # the client's HTTP library: its error, as the Hub's refusal arrives
    from huggingface_hub.utils import hf_raise_for_status

    request = httpx2.Request("POST", "https://huggingface.co/api/models/me/m/commit/main",
                             headers={"authorization": "Bearer hf_SECRETtoken123"})
    try:
        hf_raise_for_status(httpx2.Response(400, request=request, json={"error": '"base_model" is not a model id'}))
    except Exception as refused:
        said.append(refused)
    with pytest.raises(UserError, match='BadRequestError: Bad request: "base_model" is not a model id'):
        pub.publish(pub.PublishOptions(model_dir=str(d), repo="me/m"), echo=lambda s: None)
    said.append(RuntimeError("401 Unauthorized; headers: Authorization: Bearer hf_SECRETtoken123"))
    with pytest.raises(UserError) as e:
        pub.publish(pub.PublishOptions(model_dir=str(d), repo="me/m"), echo=lambda s: None)
    assert "401 Unauthorized" in str(e.value) and "SECRET" not in str(e.value)


def test_a_card_the_hub_would_refuse_is_refused_before_anything_is_sent(tmp_path, monkeypatch, hub_env):
    """A card from an earlier mechmerge names the base's local folder as base_model."""
    from mechmerge.merge import publish as pub

    d = _model_dir(tmp_path / "out")
    (d / "README.md").write_text("---\nbase_model:\n- /home/me/models/base\n- org/name\ntags: [merge]\n---\n# m\n")
    monkeypatch.setattr(pub, "make_api", lambda: pytest.fail("the Hub was contacted"))
    with pytest.raises(UserError, match="base_model lists '/home/me/models/base', which is not a Hub model id"):
        pub.publish(pub.PublishOptions(model_dir=str(d), repo="me/m", dry_run=True))
    (d / "README.md").write_text("---\nbase_model: org/name\nbase_model_relation: merge\n---\n# m\n")
    pub.publish(pub.PublishOptions(model_dir=str(d), repo="me/m", dry_run=True), echo=lambda s: None)
