"""The shadow promotion mode: a winner that would replace production goes to staging instead."""

from __future__ import annotations

from housing.registry.promotion_policy import PromotionDecision, for_shadow_mode


def test_shadow_mode_keeps_production_and_leaves_the_winner_in_staging():
    direct = PromotionDecision("9", "9", True, True, ("staging message", "'production' -> version 9"))
    shadow = for_shadow_mode(direct, "3", "staging")
    assert (
        shadow.staging_version,
        shadow.production_version,
        shadow.move_staging,
        shadow.move_production,
    ) == ("9", "3", True, False)
    assert "judged on live traffic" in shadow.messages[-1]
    assert (
        for_shadow_mode(direct, None, "staging") == direct
    )  # no production yet: the first model goes straight in
    unchanged = PromotionDecision("9", "3", True, False, ("s", "production unchanged"))
    assert for_shadow_mode(unchanged, "3", "staging") == unchanged
