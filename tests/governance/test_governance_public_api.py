import biofed.governance as governance


def test_public_api() -> None:
    assert set(governance.__all__) >= {"DatasetCheck", "DatasetRegistry", "RegisteredDataset"}
    for name in governance.__all__:
        assert hasattr(governance, name)
