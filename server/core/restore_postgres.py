"""``etcdlite snapshot restore SOURCE --backend postgres://...``: etcd (or an embedded etcdlite) into PostgreSQL.

The same sources, checks and rules as the data-dir restore (``core.restore``): the source is read as a
stream, checked completely first (nothing written), and the member list is not carried over.  The
database is asked first (reachable, holding no cluster, served by no instance), then the source is
checked, then pass two writes the data dir the embedded restore would make -- into a temporary
directory (``$TMPDIR``), which holds the snapshot file once -- and that is moved into the database in
one transaction (``storage.postgres.restore``): the snapshot streamed into the chunks an instance's own
snapshot takes, auth and alarms as the shared documents, the leases' rows.  Instances started with
``--backend`` on the database then load it by their usual start-up path and serve exactly what an
embedded etcdlite started on that data dir serves.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..storage.fsutil import make_private_dir
from ..storage.memory.files import MEMBER_DIR, SNAP_DIR, SNAP_SUFFIX, StorageError
from ..storage.memory.snapshot import stream_snapshot
from . import alarm
from .auth import store as auth_store
from .auth.model import STATE_FILE
from .restore import RestoreSummary, plan

if TYPE_CHECKING:
    from ..storage.postgres.restore import RestoredState


def restore_into_database(source: str | os.PathLike[str], url: str,
                          skip_hash_check: bool = False) -> RestoreSummary:
    try:
        from ..storage.postgres import restore as pg
    except ImportError:
        raise StorageError(f"--backend {url.split(':', 1)[0]}:// needs psycopg: pip install 'etcdlite[postgres]'"
                           ) from None
    pg.check_target(url)
    summary, writer = plan(source, skip_hash_check)
    with tempfile.TemporaryDirectory(prefix="etcdlite-restore-") as tmp:
        staging = Path(tmp) / "data"
        make_private_dir(staging)
        writer(staging)
        pg.write(url, _staged_state(staging / MEMBER_DIR))
    return summary


def _staged_state(member: Path) -> RestoredState:
    """What the staged data dir holds, as the database will: the snapshot file, auth, alarms."""
    from ..storage.postgres.restore import RestoredState

    snaps = sorted((member / SNAP_DIR).glob(f"*{SNAP_SUFFIX}"))
    if len(snaps) != 1:
        raise StorageError(f"the staged data dir {member.parent} holds {len(snaps)} snapshots, not one")
    with open(snaps[0], "rb") as f:
        try:
            head, _ = stream_snapshot(f)  # the header and the leases; the groups are streamed by the write
        except ValueError as exc:
            raise StorageError(f"the staged snapshot {snaps[0]} is damaged: {exc}") from None
    documents: dict[str, bytes] = {}
    for name, path in ((auth_store.SHARED_NAME, member / STATE_FILE), (alarm.SHARED_NAME, member / alarm.ALARMS_FILE)):
        if path.exists():
            documents[name] = path.read_bytes()
    return RestoredState(snaps[0], head.index, head.revision, head.leases, documents)
