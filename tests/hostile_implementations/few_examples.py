"""The reference, declaring ``max_examples = 1``: one drawn case per property is too little to be "conformant"
(audit finding B3)."""
from hostile_implementations import record
from involution.reference import involution2d, involution2d_backward  # noqa: F401

record("imported")
CONFORMANCE_LIMITS = {"max_examples": 1}
