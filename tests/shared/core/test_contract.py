"""The preprocessing contract round-trips through JSON and refuses what it does not know."""

import pytest
from pydantic import ValidationError

from shared.core.contract import CLASS_NAMES, PreprocessingContract


def test_json_round_trip() -> None:
    contract = PreprocessingContract(image_size=96, layout="flat", scaling="raw")
    assert PreprocessingContract.from_json(contract.to_json()) == contract


def test_study_label_encoding() -> None:
    assert CLASS_NAMES == ("notumor", "pituitary", "meningioma", "glioma")


@pytest.mark.parametrize("bad", ['{"image_size": 4}', '{"layout": "nchw"}', '{"unknown_field": 1}', '{"channels": 3}'])
def test_bad_contracts_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        PreprocessingContract.from_json(bad)


def test_input_shapes() -> None:
    assert PreprocessingContract(image_size=32, layout="flat").input_shape() == (None, 1024)
    assert PreprocessingContract(image_size=32, layout="nhwc").input_shape(2) == (2, 32, 32, 1)
