"""Who a call comes from, read off the call: the token in its metadata, the TLS client
certificate's common name (only with ``--client-cert-auth``, as etcd), and whether the HTTP
gateway made it.  Core decides what they are worth (``core.auth``)."""

from __future__ import annotations

from ..core.auth.model import Credentials
from ..core.auth.store import AuthStore
from ..storage.backend import Backend
from .context import CallContext

GATEWAY_HEADER = "grpcgateway-accept"  # set by the HTTP gateway on every call it makes


class CredentialsReader:
    def __init__(self, client_cert_auth: bool) -> None:
        self._client_cert_auth = client_cert_auth

    def __call__(self, context: CallContext) -> Credentials:
        """The call's credentials (read once per call: a stream's messages share them)."""
        cached: Credentials | None = getattr(context, "credentials", None)
        if cached is not None:
            return cached
        who = self._read(context)
        try:
            context.credentials = who  # type: ignore[attr-defined]
        except AttributeError:
            pass
        return who

    def _read(self, context: CallContext) -> Credentials:
        token = authorization = None
        via_gateway = False
        for key, value in context.invocation_metadata() or ():
            key = key.lower()
            if key == "token":
                if token is None:
                    token = _text(value)
            elif key == "authorization":
                if authorization is None:
                    authorization = _text(value)
            elif key == GATEWAY_HEADER:
                via_gateway = True
        if token is None:  # etcd's AuthInfoFromCtx: "token", else "authorization"
            token = authorization
        cert_cn = None
        if token is None and self._client_cert_auth and not via_gateway:
            cert_cn = _tls_common_name(context)
        return Credentials(token, cert_cn, via_gateway)


class TokenCatchUp:
    """Over a shared backend: a call whose simple token another instance issued in a log entry not
    applied here yet waits for the log first (a read index), so a token is valid on every instance as
    soon as Authenticate returned.  Any other call only pays a look-up of its token."""

    def __init__(self, reader: CredentialsReader, auth: AuthStore, backend: Backend) -> None:
        self._reader = reader
        self._auth = auth
        self._backend = backend

    def pending(self, context: CallContext) -> bool:
        token = self._reader(context).token
        return token is not None and self._auth.token_unseen(token, self._backend.durable_index)

    async def wait(self) -> None:
        await self._backend.read_index()


def _tls_common_name(context: CallContext) -> str | None:
    """The verified client certificate's CN ("" when it has none); None without a client certificate."""
    props = context.auth_context() or {}
    if not props.get("x509_pem_cert") and not props.get("x509_subject"):
        return None
    names = props.get("x509_common_name") or [b""]
    return names[0].decode(errors="replace")


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode(errors="replace")
