from pathlib import Path

import pytest

from deepcluster.config import PREDATED_KEYS, Config, build_config, load_config_file, recorded_config
from deepcluster.errors import ConfigError


def test_defaults_follow_the_paper_optimiser_and_deepcluster_v2_head():
    config = Config()
    assert (config.lr, config.momentum, config.weight_decay, config.batch_size) == (0.05, 0.9, 1e-5, 128)
    assert (config.head, config.pca_dim, config.temperature) == ("prototypes", None, 0.1)
    assert config.dataset == "fashion-mnist-sample"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_clusters": 1}, "num_clusters"),
        ({"epochs": 0}, "epochs"),
        ({"dataset": "imagenet-please"}, "unknown dataset 'imagenet-please'"),
        ({"classes": [1, 1]}, "duplicates"),
        ({"classes": [-1]}, "non-negative"),
        ({"crop_scale": [0.9, 0.2]}, "crop_scale"),
        ({"crop_ratio": [2.0, 0.5]}, "crop_ratio"),
        ({"crop_ratio": [0.0, 2.0]}, "crop_ratio"),
        ({"no_such_knob": 3}, "no_such_knob"),
        ({"head": "prototypes", "pca_dim": 64}, "pca_dim must be null"),
        ({"rotation": 200}, "rotation"),
        ({"num_heads": 0}, "num_heads"),
        ({"extra_clusters": [10, 1]}, "every k in extra_clusters must be at least 2"),
        ({"instance_weight": 0.5, "views": 1}, "views must be >= 2"),
        ({"groups": 1}, "groups"),
        ({"neighbours": -1}, "neighbours"),
    ],
)
def test_invalid_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(values)


def test_dataset_may_be_a_folder(tmp_path: Path):
    assert build_config({"dataset": str(tmp_path)}).dataset == str(tmp_path)
    file = tmp_path / "x.txt"
    file.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        build_config({"dataset": str(file)})


def test_differing_keys_ignore_epochs():
    base = Config()
    assert base.differing_keys(Config(epochs=99)) == []
    assert base.differing_keys(Config(seed=3, num_clusters=5)) == ["num_clusters", "seed"]


def test_config_file(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text('{"num_clusters": 12}')
    assert build_config(load_config_file(path)).num_clusters == 12
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config_file(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_config_file(tmp_path / "missing.json")


def test_a_run_recorded_before_a_key_existed_keeps_how_it_trained():
    old = Config().to_json_dict()
    for key in PREDATED_KEYS:
        del old[key]
    old["pca_dim"] = 256  # as every run before the prototype head recorded
    config = recorded_config(old)
    assert (config.head, config.kmeans_init, config.rotation, config.num_heads) == ("linear", "random", 0.0, 1)
    assert recorded_config(Config().to_json_dict()) == Config()  # complete records are taken as they are
