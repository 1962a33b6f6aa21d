"""A secure vector means the same on both sides: a site reads its request from the canonical
JSON (keys sorted), the coordinator unmasks the sum with the request it built; the layout's
order must not depend on which of the two a side holds."""

from __future__ import annotations

import numpy as np

import biofed.analytics as ba


def test_the_secure_vector_has_one_order_whatever_side_builds_the_request() -> None:
    query = ba.Query(kind="count")
    built = ba.Request(
        query=query, pass_no=1, step="s", secure=True, layout={"sum_x": (3,), "events": (1,)}
    )
    read = ba.Request.from_json(built.to_json())  # what a site holds
    assert list(built.layout or {}) == list(read.layout or {}) == ["events", "sum_x"]
    site = ba.Answer(arrays={"sum_x": np.array([1.0, 2.0, 3.0]), "events": np.array([7.0])},
                     records=5)  # fmt: skip
    vector = ba.secure_vector(read, site)
    assert np.array_equal(vector, ba.secure_vector(built, site))
    total = ba.total_from_vector(built, 2 * vector)  # the coordinator unmasks a sum of two
    assert np.array_equal(total.arrays["sum_x"], [2.0, 4.0, 6.0])
    assert np.array_equal(total.arrays["events"], [14.0])
    assert total.records == 10
