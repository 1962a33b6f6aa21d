import biofed.node as node


def test_public_api() -> None:
    assert node.__all__ == [
        "BundleRunner",
        "DatasetSource",
        "GovernanceConfig",
        "NodeApp",
        "NodeConfig",
        "SiteNode",
        "run_node",
    ]
