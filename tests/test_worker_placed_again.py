"""A prefill worker given a newer assignment of a request it still prefills (the scheduler declared
its decode worker dead and chose another) sends the K/V to the new decode worker, unless the
hand-over already began; a resent or older assignment, or a colocated one, changes nothing."""

from __future__ import annotations

from loraplex.protocol import PrefillAssign, SubmitRequest
from loraplex.sampling_params import SamplingParams
from loraplex.worker.active import Active
from loraplex.worker.control import placed_again

SUB = SubmitRequest("r1", "t", "gw", [1, 2, 3], SamplingParams(max_tokens=4))


def _active(decode: str = "d-old", assignment: tuple[int, int] = (2, 1)) -> Active:
    req = Active(SUB, None, decode)
    req.assignment = assignment
    return req


def _assign(decode: str, epoch: int, attempt: int) -> PrefillAssign:
    return PrefillAssign(SUB, decode_worker=decode, attempt=attempt, epoch=epoch)


def test_a_newer_attempt_redirects_the_k_v_before_it_leaves() -> None:
    req = _active()
    assert placed_again(req, _assign("d-new", 2, 2))
    assert req.decode_worker == "d-new" and req.assignment == (2, 2)
    assert placed_again(req, _assign("d-next", 3, 0))  # a new leader's epoch is newer too
    assert req.decode_worker == "d-next"


def test_nothing_changes_once_shipping_or_for_old_or_colocated_assignments() -> None:
    shipping = _active()
    shipping.shipping = True
    assert not placed_again(shipping, _assign("d-new", 2, 2))
    assert shipping.decode_worker == "d-old"
    for msg in (_assign("d-new", 2, 1), _assign("d-new", 2, 0), _assign("d-new", 1, 5)):
        req = _active()
        assert not placed_again(req, msg) and req.decode_worker == "d-old"  # resent or older
    colocated = _active(decode="")
    assert not placed_again(colocated, _assign("d-new", 2, 2)) and colocated.decode_worker == ""
    assert not placed_again(_active(), _assign("", 2, 2))  # now colocated elsewhere: not here
