"""The captioned digits: the local text encoder (`training.text_encoder`), the `digits-text`
source (the digits, each captioned by its digit in one of several phrasings and encoded), and
prompt adherence (`Metric`'s "prompt_error": the digits classifier's error against the class a
caption names), down to the summary of a run whose samples are scored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from training import data, evaluation  # noqa: E402
from training.config import PRESETS  # noqa: E402
from training.metrics import DigitsFeatures  # noqa: E402
from training.run_folder import Run  # noqa: E402
from training.runs import Backend, train_and_evaluate  # noqa: E402
from training.text_encoder import SPECIAL, TextEncoder, vocabulary_of, words  # noqa: E402

NUMERALS = tuple(str(d) for d in range(10))


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The digits classifier trained once per session (as the short runs' fixtures share it)."""
    monkeypatch.setenv("TRIGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def captioned() -> tuple[data.Dataset, data.Dataset]:
    return data.digits_text()


def named_digits(caption: str) -> list[int]:
    """Every digit a caption names, in words or in numerals."""
    return [data.DIGIT_WORDS.index(w) if w in data.DIGIT_WORDS else int(w) for w in words(caption)
            if w in data.DIGIT_WORDS or w in NUMERALS]  # fmt: skip


def test_the_encoder_is_deterministic_order_sensitive_and_masks_padding() -> None:
    vocabulary = vocabulary_of(["the digit seven", "the number 7", "a handwritten seven"])
    encoder = TextEncoder(vocabulary, width=16)
    captions = ["the digit seven", "seven digit the", "the number seven", "seven", "", "the DIGIT, zebra"]
    states, mask = encoder(captions)
    again, _ = TextEncoder(vocabulary, width=16)(captions)  # a fresh encoder: the same weights
    np.testing.assert_array_equal(states, again)
    other, _ = TextEncoder(vocabulary, width=16, seed=1)(captions)
    assert not np.allclose(states, other)
    assert states.shape == (6, 4, 16) and states.dtype == np.float32
    # the start token, then one token per word; unknown words are <unk>, punctuation and case ignored
    assert mask.sum(1).tolist() == [4, 4, 4, 2, 1, 4] and (np.diff(mask, axis=1) <= 0).all()
    ids, _ = encoder.tokenize(["the DIGIT, zebra"])
    word_id = {w: len(SPECIAL) + i for i, w in enumerate(vocabulary)}
    start, unknown = SPECIAL.index("<start>"), SPECIAL.index("<unk>")
    assert ids.tolist() == [[start, word_id["the"], word_id["digit"], unknown]]
    # word order and context: the same words in another order, the same word after other words
    assert not np.allclose(states[0], states[1])
    assert not np.allclose(states[0, 3], states[2, 3])  # "seven" after "the digit" / "the number"
    # padding is zero and does not reach the tokens: a caption alone or beside longer ones agrees
    assert not states[mask == 0].any()
    alone, alone_mask = encoder(["seven"])
    np.testing.assert_allclose(states[3, :2], alone[0], atol=1e-6)
    assert alone_mask.tolist() == [[1, 1]]
    # the empty prompt is its start token, not all zero (an all-zero row stands for no caption)
    assert np.linalg.norm(states[4, 0]) > 1 and not states[4, 1:].any()
    # a given length pads, or cuts longer captions after the start token
    padded, padded_mask = encoder(["seven", ""], length=5)
    assert padded.shape == (2, 5, 16) and padded_mask.sum(1).tolist() == [2, 1]
    np.testing.assert_allclose(padded[0, :2], alone[0], atol=1e-6)
    assert encoder(["the digit seven"], length=2)[1].tolist() == [[1, 1]]
    for bad in (dict(width=15), dict(vocabulary=("a", "a")), dict(vocabulary=("<unk>",))):
        with pytest.raises(ValueError):
            TextEncoder(**{"vocabulary": vocabulary, **bad})


def test_digits_text_is_the_digits_each_captioned_by_its_digit(captioned) -> None:
    train, held_out = captioned
    for text_set, plain in zip(captioned, data.digits()):  # the same pixels, labels and split
        np.testing.assert_array_equal(text_set.x, plain.x)
        np.testing.assert_array_equal(text_set.labels, plain.labels)
        np.testing.assert_array_equal(text_set.rows, plain.rows)
        assert text_set.num_classes == 10 and text_set.text is train.text
    captions, labels = train.text.captions, data._all_digits().labels
    assert len(captions) == 1797
    assert all(named_digits(c) == [d] for c, d in zip(captions, labels))  # its own digit, once
    for digit in range(10):  # several phrasings of each digit, in words and in numerals
        own = {c for c, d in zip(captions, labels) if d == digit}
        assert len(own) >= 5
        assert any(data.DIGIT_WORDS[digit] in words(c) for c in own)
        assert any(str(digit) in words(c) for c in own)
    assert "a handwritten seven" in captions and "an 8 written by hand" in captions
    # the same captions for any run's seed (its source ignores the seed, as the digits split does)
    source = data.source_of("digits-text")
    assert source.metric == "fd_digits" and not source.takes_path
    for seed in (0, 3):
        other, _ = source.load(Path(), seed, 0.5, None)
        assert other.text.captions == captions
        np.testing.assert_array_equal(other.text.states, train.text.states)


def test_captioned_digits_pack_their_encoded_captions_into_the_layout(captioned) -> None:
    train, _ = captioned
    text, layout = train.text, train.text.layout
    assert (layout.mask, layout.pooled, layout.width) == (True, 0, 32) and text.pooled is None
    assert layout.length == max(len(words(c)) for c in text.captions) + 1  # the start token
    assert train.condition_dim == layout.size
    # a sample's row is its caption encoded by the vocabulary's encoder, states then mask
    encoder = TextEncoder(
        vocabulary_of([data.digit_caption(d, p) for d in range(10) for p in range(len(data.DIGIT_PHRASINGS))])
    )
    index = np.array([0, 5, 17, 1499])
    captions = [text.captions[r] for r in train.rows[index]]
    states, mask = encoder(captions, length=layout.length)
    rows = train.conditions(index)
    np.testing.assert_allclose(rows, layout.pack(states, mask), atol=1e-6)
    unpacked_states, unpacked_mask, pooled = layout.unpack(rows)
    np.testing.assert_array_equal(unpacked_mask, mask)
    assert pooled is None and unpacked_states.shape == (4, layout.length, 32)
    empty_states, empty_mask = encoder([""], length=layout.length)
    np.testing.assert_allclose(text.empty, layout.pack(empty_states, empty_mask)[0], atol=1e-6)
    assert text.empty.any() and text.empty[layout.length * 32 :].tolist() == [1] + [0] * (layout.length - 1)
    # sampling for classes takes captions that name them
    caption_of = {
        train.conditions(np.array([i]))[0].tobytes(): text.captions[r] for i, r in enumerate(train.rows)
    }
    classes = np.arange(40) % 10
    drawn = [caption_of[row.tobytes()] for row in train.captions_for(classes, 40)]
    assert [named_digits(c) for c in drawn] == [[c] for c in classes]
    assert len(set(drawn)) > 10  # each class's captions in turn, in several phrasings


def test_prompt_error_is_the_classifiers_error_against_the_named_class(captioned) -> None:
    train, held_out = captioned
    config = replace(PRESETS["digits"], data="digits-text")
    metric = evaluation.Metric(config, train, held_out)
    classifier = DigitsFeatures.load_or_train(train, held_out)
    assert metric.name == "fd_digits"
    # held-out digits drawn "for" their own labels: the classifier's own error
    scores = metric(held_out.x, classes=held_out.labels)
    assert set(scores) == {"fd_digits", "fd_pixels", "out_of_range", "prompt_error"}
    assert scores["prompt_error"] == pytest.approx(1 - classifier.accuracy)
    assert scores["prompt_error"] < 0.06
    # for classes they do not show: wrong about 9 times in 10
    shuffled = np.random.default_rng(0).permutation(held_out.labels)
    wrong = metric(held_out.x, classes=shuffled)["prompt_error"]
    assert wrong == pytest.approx(np.mean(classifier.predict(held_out.x) != shuffled))
    assert 0.8 < wrong < 0.97
    assert "prompt_error" not in metric(held_out.x)  # no classes, no adherence
    with pytest.raises(ValueError, match="classes for"):
        metric(held_out.x, classes=held_out.labels[:5])
    # the floor: training digits against their own labels (every one, with one seed)
    floor = metric.floor(train, len(train), seeds=1)
    assert floor["prompt_error"]["mean"] == pytest.approx(
        np.mean(classifier.predict(train.x) != train.labels)
    )
    # the digits without captions score exactly as before: no prompt_error, even given classes
    plain_train, plain_held_out = data.digits()
    plain = evaluation.Metric(PRESETS["digits"], plain_train, plain_held_out)
    assert set(plain(held_out.x, classes=held_out.labels)) == {"fd_digits", "fd_pixels", "out_of_range"}
    assert set(plain.floor(plain_train, 100, seeds=2)) == {"fd_digits", "fd_pixels", "out_of_range"}


def shown(held_out: data.Dataset, classes: np.ndarray) -> np.ndarray:
    """The i-th held-out digit of each class classes[i]."""
    return np.stack([held_out.x[held_out.labels == c][i] for i, c in enumerate(classes)])


def fake_backend(train: data.Dataset, held_out: data.Dataset) -> Backend:
    """A run script whose models sample held-out digits: of the class they are asked for (the
    digit its caption names, or its one-hot class), but for sCT of the next class."""
    caption_class = {
        row.tobytes(): d for row, d in zip(train.conditions(np.arange(len(train))), train.labels)
    }

    def sample_from(model, kind, times, z, noises, labels, sigma_d, *rest):
        if labels.shape[1] == 10:
            classes = labels.argmax(1)
        else:
            classes = np.array([caption_class[row.tobytes()] for row in labels])
        return shown(held_out, (classes + (model == "sct")) % 10)

    def load_network(path: Path):
        raise AssertionError("no checkpoints here")

    return Backend("fake", lambda name, train_set, teacher: name, load_network, sample_from)


@pytest.mark.parametrize("data_name", ["digits-text", "digits"])
def test_a_runs_summary_has_prompt_error_for_captioned_digits_only(data_name: str, tmp_path: Path) -> None:
    base = PRESETS["digits"]
    config = replace(
        base,
        data=data_name,
        network=replace(base.network, options={**base.network.options, "text": data_name == "digits-text"}),
        eval=replace(base.eval, num=20, seeds=1, heun_steps=(3,), cm_steps=(1,)),
    )
    train, held_out = data.load(config)
    summary = train_and_evaluate(config, Run(tmp_path / "run"), True, fake_backend(train, held_out))
    names = {"fd_digits", "fd_pixels", "out_of_range"}
    if data_name == "digits-text":
        names.add("prompt_error")
    assert set(summary["floors"]) == names
    classifier = DigitsFeatures.load_or_train(train, held_out)
    classes = np.arange(20) % 10  # drawn for the caption of each class in turn
    for result in summary["results"]:
        assert set(result["metrics"]) == names
        if data_name == "digits-text":
            images = shown(held_out, (classes + (result["model"] == "sct")) % 10)
            expected = np.mean(classifier.predict(images) != classes)
            assert result["metrics"]["prompt_error"]["mean"] == pytest.approx(expected)
            assert expected > 0.8 if result["model"] == "sct" else expected < 0.2
    assert {r["model"] for r in summary["results"]} == {"teacher", "scd", "sct"}
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert ("prompt_error" in logged) == (data_name == "digits-text")


def test_the_digits_text_preset_takes_the_captions_layout_and_refuses_data_without_it(
    capsys: pytest.CaptureFixture,
) -> None:
    """The preset's Sana is built for `digits_text`'s layout (7 tokens × 32 and a mask); data
    with no captions, or captions laid out otherwise, are refused by name before the run."""
    pytest.importorskip("torch")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    import torch_run

    from training import cli

    config = PRESETS["digits-text"]
    train, _ = data.digits_text()
    assert config.network.options["text"] == {"length": 7, "width": 32, "mask": True, "pooled": 0}
    assert config.network.label_dim == train.condition_dim == train.text.layout.size
    assert cli.fit_to_data(config, train) == config
    with pytest.raises(
        ValueError, match=r"takes text conditions laid out as .*the data \(digits\) have none"
    ):
        cli.fit_to_data(replace(config, data="digits"), data.digits()[0])
    assert torch_run.main(["--preset", "digits-text", "--data", "digits", "--runs", "/nonexistent/runs"]) == 2
    assert "takes text conditions laid out as" in capsys.readouterr().err


@pytest.mark.slow
def test_the_digits_text_preset_trains_sana_the_diffusers_way_and_distils_it_with_cfg(tmp_path: Path) -> None:
    """`--preset digits-text` at a reduced size: the Sana teacher (reading σ in [0, 1]) trained
    by flow matching, sCD with CFG (the student's scale by Sana's own guidance input), every
    sampler scored with prompt_error, and `sample` drawing captioned digits."""
    pytest.importorskip("torch")
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    import torch_run

    from backends.torch import trainer

    runs = tmp_path / "runs"
    argv = ["--preset", "digits-text", "--teacher-steps", "20", "--scd-steps", "4", "--eval-num", "40",
            "--eval-seeds", "1", "--runs", str(runs)]  # fmt: skip
    assert torch_run.main(argv) == 0
    run = next(runs.iterdir())
    results = json.loads((run / "summary.json").read_text())["results"]
    samplers = {(r["model"], r["sampler"]) for r in results}
    assert {
        ("teacher", "euler-10"),
        ("teacher", "dpmsolver++-10"),
        ("scd", "1-step"),
        ("scd", "2-step"),
    } <= samplers
    assert all(0 <= r["metrics"]["prompt_error"]["mean"] <= 1 for r in results)
    student, meta, _ = trainer.load_network(run / "checkpoints" / "scd-000004")
    assert meta["guidance"] and student.model.config.guidance_embeds and student.emb_guidance is None
    assert student.schedule.scale == 1.0  # the model reads σ in [0, 1], as SanaSprintPipeline feeds it
    out = tmp_path / "samples.npz"
    checkpoint = str(run / "checkpoints" / "scd-000004")
    sample = ["sample", "--checkpoint", checkpoint, "--steps", "2", "--num", "20", "--guidance", "2",
              "--out", str(out)]  # fmt: skip
    assert torch_run.main(sample) == 0
    drawn = np.load(out)
    assert drawn["samples"].shape == (20, 1, 8, 8) and drawn["labels"].tolist() == [k % 10 for k in range(20)]
