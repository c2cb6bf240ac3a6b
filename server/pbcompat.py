"""What differs between the protobuf releases etcdlite supports (see deps.py), in one place."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from google.protobuf.descriptor import FieldDescriptor


def _by_label(fd: FieldDescriptor) -> bool:
    return fd.label == FieldDescriptor.LABEL_REPEATED  # type: ignore[attr-defined,no-any-return]


# FieldDescriptor.is_repeated came in protobuf 6.31; protobuf 7 removed the label it replaced
is_repeated: Callable[[FieldDescriptor], bool] = (
    attrgetter("is_repeated") if hasattr(FieldDescriptor, "is_repeated") else _by_label
)
