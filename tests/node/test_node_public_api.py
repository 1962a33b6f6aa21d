import biofed.node as node


def test_public_api() -> None:
    assert node.__all__ == [
        "MEMORY_LEDGER",
        "BundleRunner",
        "DatasetSource",
        "GovernanceConfig",
        "NodeApp",
        "NodeConfig",
        "PrivacyConfig",
        "SiteNode",
        "Step",
        "Work",
        "run_node",
        "site_chain",
    ]
