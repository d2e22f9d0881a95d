"""The comparison report's text, from rows shaped as train_family returns them."""

from services.training.options import TrainingOptions
from services.training.report import comparison_markdown

METRICS = {
    "test_accuracy": 0.96,
    "test_f1_macro": 0.959,
    "test_precision_macro": 0.96,
    "test_recall_macro": 0.958,
    "test_roc_auc_ovr_macro": 0.995,
    "onnx_ms_per_image": 12.5,
    "onnx_bytes": 9.5e6,
}
INFO = {
    "data_dir": "/data",
    "train_pool_images": 100,
    "test_images": 20,
    "test_source": "split",
    "train_images": 80,
    "duplicate_groups": 3,
    "images_in_duplicate_groups": 7,
    "largest_duplicate_group": 3,
    "test_files_sha256": "abc",
}


def row(family: str, stages: dict) -> dict:
    return {
        "family": family,
        "version": "2",
        "params": {"fine_tune_blocks": 4},
        "metrics": METRICS,
        "cv": {"cv_mean_val_accuracy": 0.95},
        "stages": stages,
        "search_seconds": 120.0,
        "train_seconds": 300.0,
    }


def test_report_compares_families_and_the_cost_of_fine_tuning() -> None:
    tuned = {
        "frozen_head_test_accuracy": 0.94,
        "lower_features_seconds": 60,
        "head_seconds": 30,
        "fine_tune_seconds": 240,
    }
    text = comparison_markdown([row("mobilenetv2", tuned), row("cnn", {})], INFO, TrainingOptions(), 600)
    assert "| MobileNetV2 | 0.9600 | 0.9590 |" in text
    assert "| Small CNN | 0.9600 |" in text and "0.952" in text
    assert "frozen base + head 0.9400 test accuracy (1.5 min)" in text
    assert "(+0.0200 for 4.0 more min)" in text
    assert "3 groups holding 7 images" in text


def test_report_of_a_network_trained_whole_has_no_frozen_stage() -> None:
    whole = row("mobilenetv2", {"fine_tune_seconds": 1200})
    whole["params"] = {"fine_tune_blocks": 16}
    text = comparison_markdown([whole], INFO, TrainingOptions(), 1300)
    assert "trained whole (16 blocks) 0.9600 test accuracy (20.0 min)" in text


def test_report_without_fine_tuning_says_so() -> None:
    text = comparison_markdown([row("rf", {})], INFO, TrainingOptions(search="none"), 60)
    assert "No family was fine-tuned in this run." in text and "--search none" in text


def test_report_names_the_kind_of_forest_chosen() -> None:
    extra, plain = row("rf", {}), row("rf", {})
    extra["params"], plain["params"] = {"forest": "extra_trees"}, {"forest": "random_forest"}
    assert "| Random Forest (extra trees) | 0.9600 |" in comparison_markdown([extra], INFO, TrainingOptions(), 60)
    assert "| Random Forest | 0.9600 |" in comparison_markdown([plain], INFO, TrainingOptions(), 60)


def test_report_gives_the_command_with_its_set_overrides() -> None:
    options = TrainingOptions(search="quick", overrides={"n_estimators": 100})
    text = comparison_markdown([row("rf", {})], INFO, options, 60)
    assert "`python -m services.training.cli --search quick --set n_estimators=100`" in text
