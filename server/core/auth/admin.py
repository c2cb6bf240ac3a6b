"""Auth management: users, roles, the enabled flag and Authenticate (etcd's v3rpc/auth.go, apply_auth.go).

Every RPC but Authenticate needs the root role once auth is enabled (UserGet
and RoleGet also serve a user asking about itself or a role it has); a bad
token is refused even while auth is disabled, as in etcd.  Passwords are
hashed off the event loop before the change is applied, and the root-role
check is made after that, right before the change, as etcd's apply step does.
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

from google.protobuf.message import Message

from ...pb.etcdserverpb import rpc_pb2 as pb
from ..server import Core, Who
from .model import Permission
from .store import AuthStore

_Resp = TypeVar("_Resp", bound=Message)


class AuthAdmin:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._auth: AuthStore = core.auth

    async def _header(self, resp: _Resp) -> _Resp:
        """Once the change is durable (a shared backend commits it with the log), the header."""
        await self._core.backend.wait_applied()
        self._core.fill_header(resp.header)  # type: ignore[attr-defined]
        return resp

    async def auth_enable(self, request: pb.AuthEnableRequest, who: Who) -> pb.AuthEnableResponse:
        self._auth.check_admin(who)
        self._auth.enable()
        return await self._header(pb.AuthEnableResponse())

    async def auth_disable(self, request: pb.AuthDisableRequest, who: Who) -> pb.AuthDisableResponse:
        self._auth.check_admin(who)
        self._auth.disable()
        return await self._header(pb.AuthDisableResponse())

    async def auth_status(self, request: pb.AuthStatusRequest, who: Who) -> pb.AuthStatusResponse:
        self._auth.check_admin(who)
        enabled, revision = self._auth.status()
        return await self._header(pb.AuthStatusResponse(enabled=enabled, authRevision=revision))

    async def authenticate(self, request: pb.AuthenticateRequest, who: Who) -> pb.AuthenticateResponse:
        # etcd orders an Authenticate after every change before it (it goes through raft): with a
        # shared backend, the auth changes other instances committed are applied here first
        await self._core.backend.read_index()
        token = await self._auth.authenticate(request.name, request.password)
        return await self._header(pb.AuthenticateResponse(token=token))

    async def user_add(self, request: pb.AuthUserAddRequest, who: Who) -> pb.AuthUserAddResponse:
        info = self._auth.auth_info(who)
        no_password = request.HasField("options") and request.options.no_password
        hashed = None if no_password else await self._auth.hash_password(request.password)
        self._auth.admin_permitted(info)
        self._auth.user_add(request.name, hashed, no_password)
        return await self._header(pb.AuthUserAddResponse())

    async def user_get(self, request: pb.AuthUserGetRequest, who: Who) -> pb.AuthUserGetResponse:
        self._auth.check_user_get(who, request)
        return await self._header(pb.AuthUserGetResponse(roles=self._auth.user_get(request.name)))

    async def user_list(self, request: pb.AuthUserListRequest, who: Who) -> pb.AuthUserListResponse:
        self._auth.check_admin(who)
        return await self._header(pb.AuthUserListResponse(users=self._auth.user_list()))

    async def user_delete(self, request: pb.AuthUserDeleteRequest, who: Who) -> pb.AuthUserDeleteResponse:
        self._auth.check_admin(who)
        self._auth.user_delete(request.name)
        return await self._header(pb.AuthUserDeleteResponse())

    async def user_change_password(self, request: pb.AuthUserChangePasswordRequest, who: Who
                                   ) -> pb.AuthUserChangePasswordResponse:
        info = self._auth.auth_info(who)
        if request.password:
            hashed: bytes | None = await self._auth.hash_password(request.password)
        else:  # etcd 3.5 lets a client send the hash itself
            hashed = _decode_hash(request.hashedPassword)
        self._auth.admin_permitted(info)
        self._auth.user_change_password(request.name, hashed)
        return await self._header(pb.AuthUserChangePasswordResponse())

    async def user_grant_role(self, request: pb.AuthUserGrantRoleRequest, who: Who
                              ) -> pb.AuthUserGrantRoleResponse:
        self._auth.check_admin(who)
        self._auth.user_grant_role(request.user, request.role)
        return await self._header(pb.AuthUserGrantRoleResponse())

    async def user_revoke_role(self, request: pb.AuthUserRevokeRoleRequest, who: Who
                               ) -> pb.AuthUserRevokeRoleResponse:
        self._auth.check_admin(who)
        self._auth.user_revoke_role(request.name, request.role)
        return await self._header(pb.AuthUserRevokeRoleResponse())

    async def role_add(self, request: pb.AuthRoleAddRequest, who: Who) -> pb.AuthRoleAddResponse:
        self._auth.check_admin(who)
        self._auth.role_add(request.name)
        return await self._header(pb.AuthRoleAddResponse())

    async def role_get(self, request: pb.AuthRoleGetRequest, who: Who) -> pb.AuthRoleGetResponse:
        self._auth.check_role_get(who, request)
        perms = self._auth.role_get(request.role)
        return await self._header(pb.AuthRoleGetResponse(perm=[p.to_pb() for p in perms]))

    async def role_list(self, request: pb.AuthRoleListRequest, who: Who) -> pb.AuthRoleListResponse:
        self._auth.check_admin(who)
        return await self._header(pb.AuthRoleListResponse(roles=self._auth.role_list()))

    async def role_delete(self, request: pb.AuthRoleDeleteRequest, who: Who) -> pb.AuthRoleDeleteResponse:
        self._auth.check_admin(who)
        self._auth.role_delete(request.role)
        return await self._header(pb.AuthRoleDeleteResponse())

    async def role_grant_permission(self, request: pb.AuthRoleGrantPermissionRequest, who: Who
                                    ) -> pb.AuthRoleGrantPermissionResponse:
        self._auth.check_admin(who)
        perm = None
        if request.HasField("perm"):
            p = request.perm
            perm = Permission(p.key, p.range_end, p.permType)
        self._auth.role_grant_permission(request.name, perm)
        return await self._header(pb.AuthRoleGrantPermissionResponse())

    async def role_revoke_permission(self, request: pb.AuthRoleRevokePermissionRequest, who: Who
                                     ) -> pb.AuthRoleRevokePermissionResponse:
        self._auth.check_admin(who)
        self._auth.role_revoke_permission(request.role, request.key, request.range_end)
        return await self._header(pb.AuthRoleRevokePermissionResponse())


def _decode_hash(encoded: str) -> bytes | None:
    """Go's base64.StdEncoding.DecodeString; None when it is not valid base64."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
