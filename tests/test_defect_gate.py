"""The defect gate: the seed detector's crops join the offline annotator's defect-or-not answer."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from cascade_defect.annotate.boxes import Proposal
from cascade_defect.annotate.crop_verifier import CropVerifier
from cascade_defect.annotate.defect_gate import (
    DEFECT_AT,
    CropEvidence,
    GatedAnswers,
    answers_at,
    crop_evidence,
    defect_threshold,
    detector_evidence,
    gate_applies,
    gated_answers,
    pooled_defect_probability,
    with_detector_evidence,
)
from cascade_defect.box_settings import CropVerifierSettings, DefectGateSettings
from cascade_defect.hashing import sha256_bytes
from cascade_defect.settings import AnnotationSettings
from tests.test_box_verifiers import (
    BACKGROUND_PROPOSALS,
    SIZE,
    constructed_proposals,
    striped_images,
)


@pytest.fixture(autouse=True)
def network_attempts(no_network: list[str]) -> list[str]:
    return no_network


def test_the_gate_joins_only_the_offline_annotator_on_seeds_with_defect_free_images() -> None:
    auto = AnnotationSettings().defect_gate
    assert auto == DefectGateSettings() and auto.mode == "auto"
    line = ["crack", "no_defect", "crack", "blow hole"]
    assert gate_applies(auto, "offline", line)
    assert not gate_applies(auto, "openai", line)  # a multimodal model sees the defect itself
    assert not gate_applies(auto, "offline", ["crack", "scratches"])  # NEU-DET: all defective
    assert not gate_applies(auto, "offline", ["no_defect", "no_defect"])
    assert not gate_applies(DefectGateSettings(mode="off"), "offline", line)
    with pytest.raises(ValueError, match="extra"):
        AnnotationSettings(defect_gate={"mode": "auto", "threshold": 0.3})


def test_gated_answers_by_hand() -> None:
    """P(defect) is the mean of the crops' and the annotator's; the answer is defective from 0.5.

    a: crops 0.9, annotator 1 - 0.3 = 0.7 -> 0.8, type from crops (0.25, 0.75) -> scratches
    b: crops 0.2, annotator 1 - 0.6 = 0.4 -> 0.3 -> no_defect
    c: crops 0.0 (nothing proposed), annotator 1 - 0.0 = 1.0 -> 0.5 -> defective, uniform
       crop type (ties go to the first class) -> crack
    """
    annotator = pd.DataFrame(
        {
            "image_id": ["b", "a", "c"],  # any order: joined by id
            "crack": [0.3, 0.6, 0.2],
            "scratches": [0.1, 0.1, 0.8],
            "no_defect": [0.6, 0.3, 0.0],
        }
    )
    evidence = CropEvidence(
        ["a", "b", "c"],
        np.array([0.9, 0.2, 0.0]),
        np.array([[0.25, 0.75], [0.5, 0.5], [0.5, 0.5]]),
        ["crack", "scratches"],
    )
    probabilities, answers = gated_answers(annotator, evidence, "crops")
    assert answers == {"a": "scratches", "b": "no_defect", "c": "crack"}
    assert list(probabilities.columns) == ["image_id", "crack", "scratches", "no_defect"]
    expected = [[0.2, 0.6, 0.2], [0.15, 0.15, 0.7], [0.25, 0.25, 0.5]]
    np.testing.assert_allclose(probabilities[["crack", "scratches", "no_defect"]], expected)

    # The annotator's own type (its defect classes renormalised): a -> crack 6/7, c -> scratches.
    _, own = gated_answers(annotator, evidence, "annotator")
    assert own == {"a": "crack", "b": "no_defect", "c": "scratches"}
    # Their product: a -> crack 0.6 * 0.25 = 0.15 against scratches 0.1 * 0.75 = 0.075.
    _, product = gated_answers(annotator, evidence, "annotator_x_crops")
    assert product == {"a": "crack", "b": "no_defect", "c": "scratches"}

    with pytest.raises(ValueError, match="no annotator answer"):
        gated_answers(annotator[annotator["image_id"] != "c"], evidence)
    with pytest.raises(ValueError, match="lack the columns"):
        gated_answers(annotator.drop(columns="no_defect"), evidence)
    with pytest.raises(ValueError, match="defect_type"):
        gated_answers(annotator, evidence, "detector")


def test_a_recall_target_lowers_the_boundary_by_the_probabilities_alone() -> None:
    """P(defect) 0.9, 0.6, 0.3, 0.1, 0.1: 2.0 defects expected. Flagging from 0.5 finds
    1.5 of them (0.75); from 0.3, 1.8 (0.9), the first boundary to reach 0.8 or 0.85; from 0.1
    all of them."""
    p = np.array([0.1, 0.9, 0.3, 0.6, 0.1])  # any order
    default = defect_threshold(p)
    assert (default.threshold, default.expected_recall, default.flagged) == (DEFECT_AT, 0.75, 0.4)
    for target in (0.8, 0.85, 0.9):
        assert astuple(defect_threshold(p, target)) == pytest.approx((0.3, 0.9, 0.6))
    assert astuple(defect_threshold(p, 0.95)) == pytest.approx((0.1, 1.0, 1.0))
    # A floor, not a cap: a target the default already meets keeps 0.5.
    assert defect_threshold(p, 0.5).threshold == DEFECT_AT
    # Nothing expected to be defective: the default boundary, nothing flagged.
    assert astuple(defect_threshold(np.zeros(3), 0.85)) == (DEFECT_AT, 0.0, 0.0)
    for wrong in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="target_recall"):
            defect_threshold(p, wrong)
    with pytest.raises(ValueError, match="target_recall"):
        DefectGateSettings(target_recall=1.0)


def test_the_two_pools_answer_the_same_images_and_rank_them_differently() -> None:
    """Crops 0.9 and annotator 0.3: linear 0.6, logarithmic odds sqrt(9 * 3/7) = 1.96 -> 0.66.
    Crops 0.6 and annotator 0.6: 0.6 both ways. So the linear pool ties them and the
    logarithmic one does not; both call c + a >= 1 defective (0.2 and 0.7: 0.45 and 0.43)."""
    crop, annotator = np.array([0.9, 0.6, 0.2, 0.0]), np.array([0.3, 0.6, 0.7, 0.99])
    linear = pooled_defect_probability(crop, annotator)
    log_pool = pooled_defect_probability(crop, annotator, "logarithmic")
    np.testing.assert_allclose(linear, [0.6, 0.6, 0.45, 0.495])
    odds = np.sqrt([9 * 3 / 7, 1.5 * 1.5, 0.25 * 7 / 3])
    np.testing.assert_allclose(log_pool[:3], odds / (1 + odds))
    assert ((linear >= 0.5) == (log_pool >= 0.5)).all()
    assert log_pool[3] < 0.1 < linear[3]  # nothing proposed: the clipped crop odds weigh in
    with pytest.raises(ValueError, match="pooling"):
        pooled_defect_probability(crop, annotator, "max")


def test_auto_pooling_is_logarithmic_unless_the_crops_alone_have_a_recall_target() -> None:
    """The default pools log-odds (calibrated confidences); a recall target on the crops' evidence
    alone switches it to the linear pool (the expected recall it reaches); with the class-aware
    detector's evidence the log-odds pool stays; an explicit choice always stands."""
    assert DefectGateSettings().pooling == "auto"
    assert DefectGateSettings().class_aware_detector
    assert DefectGateSettings().pooling_rule == "logarithmic"
    assert DefectGateSettings(target_recall=0.85).pooling_rule == "logarithmic"
    crops_alone = DefectGateSettings(target_recall=0.85, class_aware_detector=False)
    assert crops_alone.pooling_rule == "linear"
    assert DefectGateSettings(class_aware_detector=False).pooling_rule == "logarithmic"
    assert DefectGateSettings(pooling="linear").pooling_rule == "linear"
    assert DefectGateSettings(pooling="logarithmic", target_recall=0.85).pooling_rule == (
        "logarithmic"
    )
    with pytest.raises(ValidationError):
        DefectGateSettings(pooling="max")


def test_a_class_aware_detector_joins_the_crops_evidence_by_hand() -> None:
    """Crops: a 0.6 (crack 0.2, scratches 0.8), b 0.4 (0.5, 0.5), c 0.0 (uniform).
    Detector: a crack 0.9 and scratches 0.3 -> best 0.9, P(defect) (0.6 + 0.9) / 2 = 0.75,
    type 0.2 * 0.9 : 0.8 * 0.3 = 0.18 : 0.24 -> (3/7, 4/7); b nothing -> 0.2 and the crops' type;
    c crack 0.4 twice (the best counts once) -> 0.2 and crack alone (the crops were uniform)."""
    crops = CropEvidence(
        ["a", "b", "c"],
        np.array([0.6, 0.4, 0.0]),
        np.array([[0.2, 0.8], [0.5, 0.5], [0.5, 0.5]]),
        ["crack", "scratches"],
        n_crops=7,
    )
    proposals = {
        "a": [
            Proposal((0.1, 0.1, 0.3, 0.3), 0.9, "crack"),
            Proposal((0.5, 0.5, 0.9, 0.9), 0.3, "scratches"),
            Proposal((0.5, 0.5, 0.8, 0.8), 0.1, "crack"),
        ],
        "c": [Proposal((0.1, 0.1, 0.2, 0.2), 0.4, "crack")] * 2,
    }
    best, per_class = detector_evidence(proposals, crops.image_ids, crops.class_names)
    np.testing.assert_allclose(best, [0.9, 0.0, 0.4])
    np.testing.assert_allclose(per_class, [[0.9, 0.3], [0.0, 0.0], [0.4, 0.0]])
    joined = with_detector_evidence(crops, proposals)
    np.testing.assert_allclose(joined.p_defect, [0.75, 0.2, 0.2])
    np.testing.assert_allclose(joined.type_proba, [[3 / 7, 4 / 7], [0.5, 0.5], [1.0, 0.0]])
    assert (joined.image_ids, joined.class_names, joined.n_crops) == (
        crops.image_ids,
        crops.class_names,
        7,
    )
    np.testing.assert_allclose(crops.p_defect, [0.6, 0.4, 0.0])  # the crops' own is kept
    with pytest.raises(ValueError, match=r"'a'.*None.*class-aware"):
        detector_evidence({"a": [Proposal((0.1, 0.1, 0.3, 0.3), 0.9, None)]}, ["a"], ["crack"])


def test_gated_answers_with_a_recall_target() -> None:
    """P(defect) a 0.8, b 0.3, c 0.5 (as by hand above): from 0.5, a and c are defective (1.3
    of 1.6 expected defects, 0.81); a 0.9 target lowers the boundary to b's 0.3, and b shows
    its crops' type."""
    annotator = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "crack": [0.6, 0.3, 0.2],
            "scratches": [0.1, 0.1, 0.8],
            "no_defect": [0.3, 0.6, 0.0],
        }
    )
    evidence = CropEvidence(
        ["a", "b", "c"],
        np.array([0.9, 0.2, 0.0]),
        np.array([[0.25, 0.75], [0.8, 0.2], [0.5, 0.5]]),
        ["crack", "scratches"],
    )
    probabilities, default = gated_answers(annotator, evidence)
    assert default == {"a": "scratches", "b": "no_defect", "c": "crack"}
    assert answers_at(probabilities) == default
    _, recalled = gated_answers(annotator, evidence, target_recall=0.9)
    assert recalled == {"a": "scratches", "b": "crack", "c": "crack"}
    assert answers_at(probabilities, 0.3) == recalled


def clean_images(folder: Path, n: int, start: int = 0) -> pd.DataFrame:
    """Noise images with no defect (``no_defect``), of the striped images' size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    rows = []
    for i in range(start, start + n):
        path = folder / f"clean_{i}.png"
        Image.fromarray(rng.normal(100, 8, (SIZE, SIZE)).clip(0, 255).astype(np.uint8)).save(path)
        rows.append(
            {
                "image_id": f"clean_{i}",
                "path": str(path),
                "sha256": sha256_bytes(path.read_bytes()),
                "width": SIZE,
                "height": SIZE,
                "class_name": "no_defect",
            }
        )
    return pd.DataFrame(rows)


def test_crop_evidence_sees_the_defect_and_its_type_in_the_crops(
    yolo_weights: Path, tmp_path: Path, network_attempts: list[str]
) -> None:
    """Seeds: three striped images per class and three clean ones. Pool: four striped images
    with a proposal on the defect and two on the background, three clean images with the two
    background proposals, and one image the detector proposed nothing on."""
    from cascade_defect.annotate.offline.features import FeatureSpec, YoloFeatureExtractor

    spec = [(c, c) for c in ("crazing", "scratches") for _ in range(3)]
    seeds, seed_boxes = striped_images(tmp_path / "seeds", spec)
    seeds = pd.concat([seeds, clean_images(tmp_path / "seeds", 3)], ignore_index=True)
    defective, truth = striped_images(tmp_path / "pool", spec[1:5])
    defective["image_id"] = defective["image_id"].str.replace("img", "pool")
    truth["image_id"] = truth["image_id"].str.replace("img", "pool")
    clean = clean_images(tmp_path / "pool", 4, start=10)
    pool = pd.concat([defective, clean], ignore_index=True)
    proposals = constructed_proposals(defective, truth)
    background = [Proposal(b, 0.5) for b in BACKGROUND_PROPOSALS]
    proposals.update({i: list(background) for i in clean["image_id"][:3]})  # clean_13: none
    seed_proposals = constructed_proposals(seeds.iloc[:6], seed_boxes)
    seed_proposals.update({i: list(background) for i in seeds["image_id"][6:]})

    extractor = YoloFeatureExtractor(
        str(yolo_weights), FeatureSpec(imgsz=64), config_dir=tmp_path / "yolo", progress=False
    )
    verifier = CropVerifier(extractor, CropVerifierSettings(threshold=0.5))
    verifier.fit(seeds, seed_boxes, seed_proposals)
    evidence = crop_evidence(verifier, pool, proposals, ["crazing", "scratches"], top_proposals=2)

    assert evidence.image_ids == list(pool["image_id"])
    assert evidence.n_crops == 4 * 2 + 3 * 2  # two best per image, none for clean_13
    p = dict(zip(evidence.image_ids, evidence.p_defect, strict=True))
    assert min(p[i] for i in defective["image_id"]) > 0.5
    assert max(p[i] for i in clean["image_id"]) < 0.5
    assert p["clean_13"] == 0.0
    types = dict(zip(evidence.image_ids, evidence.type_proba, strict=True))
    for row in defective.itertuples():
        assert ["crazing", "scratches"][int(np.argmax(types[row.image_id]))] == row.class_name
    np.testing.assert_allclose(types["clean_13"], [0.5, 0.5])
    np.testing.assert_allclose(evidence.type_proba.sum(axis=1), 1.0)
    assert network_attempts == []

    with pytest.raises(RuntimeError, match="fit"):
        crop_evidence(CropVerifier(extractor), pool, proposals, ["crazing", "scratches"], 2)


def test_the_gate_trains_its_class_aware_members_and_fuses_their_boxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``class_aware_members=3`` the gate trains the class-agnostic detector, then three
    class-aware ones (members 0, 1, 2: the next random seeds, in the class-aware folder), and
    all three are handed to the gate in order. Its record names the first member and lists the
    others; with the default one member no list is written."""
    from types import SimpleNamespace

    from cascade_defect.annotate import defect_gate, strategies
    from cascade_defect.annotate.boxes import SeedDetectorSettings
    from cascade_defect.box_settings import SelfTrainingSettings

    trained: list[tuple[bool, int, Path]] = []

    class Member:
        def __init__(self, member: int) -> None:
            self.member = member
            self.settings = SimpleNamespace(conf=0.01)

        def propose(self, pool: pd.DataFrame) -> dict[str, list[Proposal]]:
            return {"a": [Proposal((0.1, 0.1, 0.3, 0.3), 0.6, "crack")]}

    def train(recipe, seeds, seed_boxes, class_names, *, progress=True, member=0):
        trained.append((recipe.seed_detector.class_aware, member, recipe.work_dir))
        return Member(member), {"train_seconds": 10.0 + member, "n_images": 4}

    handed: dict[str, object] = {}

    def gate(**kwargs: object) -> GatedAnswers:
        handed.update(kwargs)
        return GatedAnswers(pd.DataFrame(), {}, {}, {})

    monkeypatch.setattr(strategies, "train_seed_detector", train)
    monkeypatch.setattr(strategies, "crop_verifier_for", lambda recipe, threshold=None: None)
    monkeypatch.setattr(defect_gate, "gate_with_detector", gate)
    recipe = strategies.DetectorRecipe(
        weights="yolov8n.pt",
        work_dir=tmp_path,
        seed_detector=SeedDetectorSettings(),
        self_training=SelfTrainingSettings(),
    )
    annotator = SimpleNamespace(predict_proba=lambda pool: pd.DataFrame())

    def run(members: int) -> defect_gate.GatedOffline:
        trained.clear()
        return defect_gate.gate_offline_answers(
            annotator,
            pd.DataFrame(),
            recipe=recipe,
            seeds=pd.DataFrame(),
            seed_boxes=pd.DataFrame(),
            class_names=["crack", "scratches", "no_defect"],
            settings=DefectGateSettings(class_aware_members=members),
            progress=False,
        )

    result = run(3)
    assert [(aware, member) for aware, member, _ in trained] == [
        (False, 0),
        (True, 0),
        (True, 1),
        (True, 2),
    ]
    assert {folder for aware, _, folder in trained if aware} == {tmp_path / "class_aware"}
    assert [d.member for d in handed["class_detectors"]] == [0, 1, 2]
    assert result.class_detector_details["train_seconds"] == 10.0
    assert [m["train_seconds"] for m in result.class_detector_details["more_members"]] == [
        11.0,
        12.0,
    ]

    single = run(1)
    assert [(aware, member) for aware, member, _ in trained] == [(False, 0), (True, 0)]
    assert "more_members" not in single.class_detector_details
    without = defect_gate.gate_offline_answers(
        annotator,
        pd.DataFrame(),
        recipe=recipe,
        seeds=pd.DataFrame(),
        seed_boxes=pd.DataFrame(),
        class_names=["crack", "no_defect"],
        settings=DefectGateSettings(class_aware_detector=False),
        progress=False,
    )
    assert without.class_detector_details is None and handed["class_detectors"] == []


def test_class_aware_members_need_the_class_aware_detector() -> None:
    assert DefectGateSettings().class_aware_members == 1
    with pytest.raises(ValidationError, match=r"class_aware_members is 2.*class_aware_detector"):
        DefectGateSettings(class_aware_members=2, class_aware_detector=False)
    with pytest.raises(ValidationError):
        DefectGateSettings(class_aware_members=0)


def test_class_aware_flips_need_the_class_aware_detector() -> None:
    assert DefectGateSettings().class_aware_flips == ()
    both = DefectGateSettings(class_aware_flips=["horizontal", "vertical"])
    assert both.class_aware_flips == ("horizontal", "vertical")
    with pytest.raises(ValidationError, match=r"class_aware_flips is \['vertical'\].*detector"):
        DefectGateSettings(class_aware_flips=["vertical"], class_aware_detector=False)
    with pytest.raises(ValidationError):
        DefectGateSettings(class_aware_flips=["diagonal"])


def gate_on_fixed_crops(
    monkeypatch: pytest.MonkeyPatch, settings: DefectGateSettings, class_detectors: list
) -> GatedAnswers:
    """The real ``gate_with_detector`` on one image ``a`` whose crops' evidence is fixed
    (``P(defect)`` 0.4, type crack : scratches 0.5 : 0.5; annotator 0.3, 0.3, no_defect 0.4), so
    only ``class_detectors``' proposals move what it answers."""
    from types import SimpleNamespace

    from cascade_defect.annotate import defect_gate

    crops = CropEvidence(["a"], np.array([0.4]), np.array([[0.5, 0.5]]), ["crack", "scratches"])
    proposer = SimpleNamespace(propose=lambda images: {})
    monkeypatch.setattr(defect_gate, "low_score_proposer", lambda *a, **k: proposer)
    monkeypatch.setattr(defect_gate, "crop_evidence", lambda *a, **k: crops)
    return defect_gate.gate_with_detector(
        annotator_proba=pd.DataFrame(
            {"image_id": ["a"], "crack": [0.3], "scratches": [0.3], "no_defect": [0.4]}
        ),
        detector=SimpleNamespace(progress=False, describe=lambda: {}),
        verifier=SimpleNamespace(
            settings=CropVerifierSettings(), fit=lambda *a: None, calibration={}
        ),
        seeds=pd.DataFrame(),
        seed_boxes=pd.DataFrame(),
        pool=pd.DataFrame({"image_id": ["a"], "path": ["never-read.png"]}),
        class_names=["crack", "scratches", "no_defect"],
        settings=settings,
        class_detectors=class_detectors,
    )


def test_the_gate_fuses_its_class_aware_members_before_they_join_the_crops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real ``gate_with_detector`` with the crops' evidence fixed (image a: 0.4, type
    0.5 : 0.5) and three class-aware members: a crack all three see at 0.6 keeps 0.6 and a
    scratch only the third sees at 0.6 keeps 0.2, so ``P(defect)`` joins as (0.4 + 0.6) / 2 = 0.5
    and the type as 0.5 * 0.6 : 0.5 * 0.2 = 0.75 : 0.25. The third member alone would keep both
    boxes at 0.6 (type 0.5 : 0.5)."""
    from types import SimpleNamespace

    class Member:
        def __init__(self, sees_scratch: bool) -> None:
            self.sees_scratch = sees_scratch
            self.settings = SimpleNamespace(conf=0.01)

        def propose(self, pool: pd.DataFrame, flips: tuple = ()) -> dict[str, list[Proposal]]:
            assert flips == ()  # the default gate proposes on the plain view only
            boxes = [Proposal((0.1, 0.1, 0.3, 0.3), 0.6, "crack")]
            if self.sees_scratch:
                boxes.append(Proposal((0.6, 0.6, 0.9, 0.9), 0.6, "scratches"))
            return {"a": boxes}

        def describe(self) -> dict[str, object]:
            return {"class_aware": True}

    def gate(members: list[Member]) -> GatedAnswers:
        settings = DefectGateSettings(class_aware_members=len(members))
        return gate_on_fixed_crops(monkeypatch, settings, members)

    fused = gate([Member(False), Member(False), Member(True)])
    np.testing.assert_allclose(fused.evidence.p_defect, [0.5])
    np.testing.assert_allclose(fused.evidence.type_proba, [[0.75, 0.25]])
    np.testing.assert_allclose(fused.crops_alone.p_defect, [0.4])
    alone = gate([Member(True)])
    np.testing.assert_allclose(alone.evidence.p_defect, [0.5])
    np.testing.assert_allclose(alone.evidence.type_proba, [[0.5, 0.5]])


def test_the_gate_proposes_with_its_class_aware_flips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``gate_with_detector`` hands ``class_aware_flips`` to a real class-aware
    ``SeedDetector.propose`` (only its per-view prediction stubbed): a scratch only the plain view
    sees keeps 0.6 alone and 0.2 fused with two flipped views (its mean over three), so the type
    joins as 0.5 : 0.5 without flips and 0.75 : 0.25 with them, and ``P(defect)`` stays
    (0.4 + 0.6) / 2 = 0.5 from the crack every view sees."""
    from cascade_defect.annotate.boxes import SeedDetector, SeedDetectorSettings

    detector = SeedDetector.from_trained(
        tmp_path / "unused.pt", SeedDetectorSettings(conf=0.01, class_aware=True), progress=False
    )
    crack = Proposal((0.1, 0.1, 0.3, 0.3), 0.6, "crack")
    views = {
        "none": [crack, Proposal((0.6, 0.6, 0.9, 0.9), 0.6, "scratches")],
        "horizontal": [crack],
        "vertical": [crack],
    }
    seen: list[str] = []

    def predict(paths: pd.Series, view: str) -> list[list[Proposal]]:
        seen.append(view)
        return [list(views[view]) for _ in paths]

    monkeypatch.setattr(detector, "_predict", predict)

    def gate(flips: tuple) -> GatedAnswers:
        settings = DefectGateSettings(class_aware_flips=flips)
        return gate_on_fixed_crops(monkeypatch, settings, [detector])

    plain = gate(())
    np.testing.assert_allclose(plain.evidence.p_defect, [0.5])
    np.testing.assert_allclose(plain.evidence.type_proba, [[0.5, 0.5]])
    flipped = gate(("horizontal", "vertical"))
    assert seen == ["none", "none", "horizontal", "vertical"]
    np.testing.assert_allclose(flipped.evidence.p_defect, [0.5])
    np.testing.assert_allclose(flipped.evidence.type_proba, [[0.75, 0.25]])
    assert flipped.params["settings"]["class_aware_flips"] == ("horizontal", "vertical")
