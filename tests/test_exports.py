import router


def test_public_surface_is_pinned() -> None:
    assert router.__all__ == sorted(router.__all__)
    assert router.__all__ == [
        "RouterError",
        "SCORER_VERSION",
        "ScoreResult",
        "SignalSpec",
        "TokenLogprobs",
        "__version__",
        "score_sequences",
    ]
