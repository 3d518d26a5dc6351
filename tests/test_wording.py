from engine.wording import plural


def test_plural():
    assert plural(1, "step") == "1 step"
    assert plural(3, "step") == "3 steps"
    assert plural(0, "criterion", "criteria") == "0 criteria"
