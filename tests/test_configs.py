"""Every file in configs/ is a valid config whose docstring gives the command that runs it, and
config.model is the model's own list of fields."""
import glob
import importlib
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from resunet_jax import models  # noqa: E402
from resunet_jax.training import loop  # noqa: E402

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
               if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", NAMES)
def test_config_is_valid_and_documents_its_command(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  loop.check_config(config)
  assert "train.py --config=configs/" in module.__doc__ or name == "default"
  assert "python train.py" in module.__doc__


def test_config_model_holds_every_architecture_field():
  config = models.model_config()
  fields = {f.name for f in models.separator_fields()}
  assert set(config) == (fields - set(models.DATA_FIELDS) - {"bn_axis_name"}) | {"arch", "width",
                                                                                   "levels"}
  # A field given in the config reaches the model; None keeps the preset's value.
  config.update(width=0.25, levels=2, mask="irm", bn_momentum=0.1)
  model = models.build_model(num_sources=2, **config)
  assert (model.mask, model.bn_momentum, model.channels, model.num_sources) == (
      "irm", 0.1, (8, 16), 2)
  assert model.n_fft == models.ARCHITECTURES["resunet143_ismir2021"]["n_fft"]


@pytest.mark.parametrize("overrides,message", [
    ({"mask": "ideal"}, "model field 'mask': 'ideal' is not one of ['cirm', 'decouple'"),
    ({"backbone": "transformer"}, "model field 'backbone': 'transformer' is not one of"),
    ({"channels": (16, 0)}, "model field 'channels': must be a non-empty sequence of positive"),
    ({"pools": ((2, 2),)}, "model field 'pools': must be one (time, frequency) pair"),
    ({"dtype": "int8"}, "model field 'dtype': 'int8' is not a floating dtype"),
    ({"precision": "best"}, "model field 'precision': 'best' is not None"),
    ({"conv_backend": "cuda"}, "model field 'conv_backend': 'cuda' is not one of ['cpu', 'xla']"),
    ({"levels": 9}, "model field 'levels': must be an integer in 1..6"),
    ({"width": -1.0}, "model field 'width': must be a positive number"),
    ({"hop": 0}, "model field 'hop': must be an integer >= 1"),
    ({"widht": 0.5}, "model field 'widht': unknown model option(s) ['widht']"),
])
def test_the_model_rejects_bad_fields_naming_them(overrides, message):
  with pytest.raises(models.ModelFieldError) as e:
    models.build_model("resunet143_ismir2021", **overrides)
  assert message in str(e.value)
  # The training config names the config key.
  config = importlib.import_module("configs.smoke").get_config()
  key = next(iter(overrides))
  if key in config.model:
    config.model[key] = overrides[key]
    with pytest.raises(ValueError, match=rf"config\.model\.{key}: "):
      loop.check_config(config)


def test_small_schedule_fits_its_own_length():
  # The quick-start config decays to its end at its last update: a schedule longer than the run
  # would end it at a high learning rate, a shorter one would idle at the end factor.
  from configs import small  # pylint: disable=g-import-not-at-top
  from resunet_jax.training import optim  # pylint: disable=g-import-not-at-top
  config = small.get_config()
  assert config.schedule.decay_steps == config.num_train_steps
  schedule = optim.make_schedule(config)
  lr = config.optimizer.learning_rate
  assert float(schedule(config.schedule.warm_up_steps)) == pytest.approx(lr)
  assert float(schedule(config.num_train_steps // 2)) > 0.4 * lr
  assert float(schedule(config.num_train_steps)) == pytest.approx(lr * config.schedule.end_factor)
