"""etcdserverpb.Auth: users, roles, the enabled flag and Authenticate (etcd's v3rpc/auth.go).

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

import grpc
from google.protobuf.message import Message

from ..core.auth.store import AuthStore, Permission
from ..core.server import Node
from ..pb.etcdserverpb import rpc_pb2 as pb

Context = grpc.aio.ServicerContext
_Resp = TypeVar("_Resp", bound=Message)


class AuthService:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._auth: AuthStore = node.auth

    def _header(self, resp: _Resp) -> _Resp:
        self._node.fill_header(resp.header)  # type: ignore[attr-defined]
        return resp

    async def auth_enable(self, request: pb.AuthEnableRequest, context: Context) -> pb.AuthEnableResponse:
        self._auth.check_admin(context)
        self._auth.enable()
        return self._header(pb.AuthEnableResponse())

    async def auth_disable(self, request: pb.AuthDisableRequest, context: Context) -> pb.AuthDisableResponse:
        self._auth.check_admin(context)
        self._auth.disable()
        return self._header(pb.AuthDisableResponse())

    async def auth_status(self, request: pb.AuthStatusRequest, context: Context) -> pb.AuthStatusResponse:
        self._auth.check_admin(context)
        enabled, revision = self._auth.status()
        return self._header(pb.AuthStatusResponse(enabled=enabled, authRevision=revision))

    async def authenticate(self, request: pb.AuthenticateRequest, context: Context) -> pb.AuthenticateResponse:
        token = await self._auth.authenticate(request.name, request.password)
        return self._header(pb.AuthenticateResponse(token=token))

    async def user_add(self, request: pb.AuthUserAddRequest, context: Context) -> pb.AuthUserAddResponse:
        info = self._auth.auth_info(context)
        no_password = request.HasField("options") and request.options.no_password
        hashed = None if no_password else await self._auth.hash_password(request.password)
        self._auth.admin_permitted(info)
        self._auth.user_add(request.name, hashed, no_password)
        return self._header(pb.AuthUserAddResponse())

    async def user_get(self, request: pb.AuthUserGetRequest, context: Context) -> pb.AuthUserGetResponse:
        self._auth.check_user_get(context, request)
        return self._header(pb.AuthUserGetResponse(roles=self._auth.user_get(request.name)))

    async def user_list(self, request: pb.AuthUserListRequest, context: Context) -> pb.AuthUserListResponse:
        self._auth.check_admin(context)
        return self._header(pb.AuthUserListResponse(users=self._auth.user_list()))

    async def user_delete(self, request: pb.AuthUserDeleteRequest, context: Context) -> pb.AuthUserDeleteResponse:
        self._auth.check_admin(context)
        self._auth.user_delete(request.name)
        return self._header(pb.AuthUserDeleteResponse())

    async def user_change_password(self, request: pb.AuthUserChangePasswordRequest, context: Context
                                   ) -> pb.AuthUserChangePasswordResponse:
        info = self._auth.auth_info(context)
        if request.password:
            hashed: bytes | None = await self._auth.hash_password(request.password)
        else:  # etcd 3.5 lets a client send the hash itself
            hashed = _decode_hash(request.hashedPassword)
        self._auth.admin_permitted(info)
        self._auth.user_change_password(request.name, hashed)
        return self._header(pb.AuthUserChangePasswordResponse())

    async def user_grant_role(self, request: pb.AuthUserGrantRoleRequest, context: Context
                              ) -> pb.AuthUserGrantRoleResponse:
        self._auth.check_admin(context)
        self._auth.user_grant_role(request.user, request.role)
        return self._header(pb.AuthUserGrantRoleResponse())

    async def user_revoke_role(self, request: pb.AuthUserRevokeRoleRequest, context: Context
                               ) -> pb.AuthUserRevokeRoleResponse:
        self._auth.check_admin(context)
        self._auth.user_revoke_role(request.name, request.role)
        return self._header(pb.AuthUserRevokeRoleResponse())

    async def role_add(self, request: pb.AuthRoleAddRequest, context: Context) -> pb.AuthRoleAddResponse:
        self._auth.check_admin(context)
        self._auth.role_add(request.name)
        return self._header(pb.AuthRoleAddResponse())

    async def role_get(self, request: pb.AuthRoleGetRequest, context: Context) -> pb.AuthRoleGetResponse:
        self._auth.check_role_get(context, request)
        perms = self._auth.role_get(request.role)
        return self._header(pb.AuthRoleGetResponse(perm=[p.to_pb() for p in perms]))

    async def role_list(self, request: pb.AuthRoleListRequest, context: Context) -> pb.AuthRoleListResponse:
        self._auth.check_admin(context)
        return self._header(pb.AuthRoleListResponse(roles=self._auth.role_list()))

    async def role_delete(self, request: pb.AuthRoleDeleteRequest, context: Context) -> pb.AuthRoleDeleteResponse:
        self._auth.check_admin(context)
        self._auth.role_delete(request.role)
        return self._header(pb.AuthRoleDeleteResponse())

    async def role_grant_permission(self, request: pb.AuthRoleGrantPermissionRequest, context: Context
                                    ) -> pb.AuthRoleGrantPermissionResponse:
        self._auth.check_admin(context)
        perm = None
        if request.HasField("perm"):
            p = request.perm
            perm = Permission(p.key, p.range_end, p.permType)
        self._auth.role_grant_permission(request.name, perm)
        return self._header(pb.AuthRoleGrantPermissionResponse())

    async def role_revoke_permission(self, request: pb.AuthRoleRevokePermissionRequest, context: Context
                                     ) -> pb.AuthRoleRevokePermissionResponse:
        self._auth.check_admin(context)
        self._auth.role_revoke_permission(request.role, request.key, request.range_end)
        return self._header(pb.AuthRoleRevokePermissionResponse())


def _decode_hash(encoded: str) -> bytes | None:
    """Go's base64.StdEncoding.DecodeString; None when it is not valid base64."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
