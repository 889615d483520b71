"""The rule that picks what --adapt=auto applies, on rows whose outcome is known."""

from cxr_jax.fits import perturbations
from cxr_lab import adapt_study


def _rows(method, folder, size, change, shifted=True, draws=2):
  return [{"folder": folder, "size": size, "whole": False, "draw": d, "shifted": shifted,
           "method": method, "own": 0.9, "adapted": 0.9 + change} for d in range(draws)]


def _study(a_mix_change, b_mix_change, a_gain, b_gain, small_gain=-0.2):
  rows = []
  for method, mix, gain in (("adabn+prior", a_mix_change, a_gain),
                            ("balanced+prior", b_mix_change, b_gain)):
    for size in adapt_study.SIZES:
      rows += _rows(method, adapt_study.IN_DISTRIBUTION, size, -0.05, shifted=False)
      for name in adapt_study.MIXES:
        rows += _rows(method, name, size, mix)
      for family in perturbations.FAMILIES:
        rows += _rows(method, family, size, gain if size >= 100 else small_gain)
  return rows


def test_an_unsafe_candidate_loses_to_a_safe_one_whatever_its_gain():
  choice = adapt_study.choose(_study(a_mix_change=-0.1, b_mix_change=0.0, a_gain=0.2,
                                     b_gain=0.05))
  assert choice["method"] == "balanced+prior"
  assert choice["min_images"] == 100  # Below it, adapting costs on the perturbations.
  assert not choice["table"]["adabn+prior@100"]["safe"]


def test_unshifted_folders_are_not_adapted_so_they_cost_nothing():
  rows = _study(0.0, 0.0, 0.1, 0.1)  # In distribution: -0.05 if adapted, but never shifted.
  assert adapt_study.gated_change(rows, "adabn+prior", 25, (adapt_study.IN_DISTRIBUTION,)) == 0
  assert adapt_study.choose(rows)["method"] == "adabn+prior"  # A tie goes to the simpler.


def test_nothing_safe_means_auto_never_adapts():
  choice = adapt_study.choose(_study(-0.1, -0.1, 0.2, 0.2))
  assert choice == {"method": None, "min_images": None, "table": choice["table"]}
