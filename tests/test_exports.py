import router


def test_public_surface_is_pinned() -> None:
    assert router.__all__ == [
        "SCORER_VERSION",
        "RouterError",
        "ScoreResult",
        "SignalSpec",
        "TokenLogprobs",
        "__version__",
        "score_sequences",
    ]
    for name in router.__all__:
        assert getattr(router, name) is not None
