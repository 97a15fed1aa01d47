"""The tuned-configurations table says when every variant chose the same settings."""

from __future__ import annotations

from reports.tuned import tuned_config_table


def _plan(settings: dict[str, dict[str, float]]) -> dict:
    return {
        "variants": list(settings),
        "metric": "dev_overall",
        "parameters": ["train.lr"],
        "tuned": {
            v: {"trial_id": f"t{k}", "value": 0.6 + k / 100, "settings": s}
            for k, (v, s) in enumerate(settings.items())
        },
    }


def test_the_same_choice_for_every_variant_is_pointed_out():
    same = tuned_config_table(
        _plan({"baseline": {"train.lr": 1e-4}, "cosine": {"train.lr": 1e-4}}), {}
    )
    assert any("Every variant chose the same settings" in n for n in same.notes)
    assert list(same.data["train.lr"]) == [1e-4, 1e-4]
    apart = tuned_config_table(
        _plan({"baseline": {"train.lr": 1e-4}, "cosine": {"train.lr": 3e-4}}), {}
    )
    assert not any("same settings" in n for n in apart.notes)
    one = tuned_config_table(_plan({"recipe": {"train.lr": 1e-4}}), {})
    assert not any("same settings" in n for n in one.notes)  # nothing to compare with
