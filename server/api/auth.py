"""etcdserverpb.Auth: each request is one call into core's auth management (``core.auth.admin``)."""

from __future__ import annotations

from ..core.auth.admin import AuthAdmin
from ..pb.etcdserverpb import rpc_pb2 as pb
from .context import CallContext
from .credentials import CredentialsReader


class AuthService:
    def __init__(self, admin: AuthAdmin, who: CredentialsReader) -> None:
        self._admin = admin
        self._who = who

    async def auth_enable(self, request: pb.AuthEnableRequest, context: CallContext) -> pb.AuthEnableResponse:
        return await self._admin.auth_enable(request, self._who(context))

    async def auth_disable(self, request: pb.AuthDisableRequest, context: CallContext) -> pb.AuthDisableResponse:
        return await self._admin.auth_disable(request, self._who(context))

    async def auth_status(self, request: pb.AuthStatusRequest, context: CallContext) -> pb.AuthStatusResponse:
        return await self._admin.auth_status(request, self._who(context))

    async def authenticate(self, request: pb.AuthenticateRequest, context: CallContext) -> pb.AuthenticateResponse:
        return await self._admin.authenticate(request, self._who(context))

    async def user_add(self, request: pb.AuthUserAddRequest, context: CallContext) -> pb.AuthUserAddResponse:
        return await self._admin.user_add(request, self._who(context))

    async def user_get(self, request: pb.AuthUserGetRequest, context: CallContext) -> pb.AuthUserGetResponse:
        return await self._admin.user_get(request, self._who(context))

    async def user_list(self, request: pb.AuthUserListRequest, context: CallContext) -> pb.AuthUserListResponse:
        return await self._admin.user_list(request, self._who(context))

    async def user_delete(self, request: pb.AuthUserDeleteRequest, context: CallContext
                          ) -> pb.AuthUserDeleteResponse:
        return await self._admin.user_delete(request, self._who(context))

    async def user_change_password(self, request: pb.AuthUserChangePasswordRequest, context: CallContext
                                   ) -> pb.AuthUserChangePasswordResponse:
        return await self._admin.user_change_password(request, self._who(context))

    async def user_grant_role(self, request: pb.AuthUserGrantRoleRequest, context: CallContext
                              ) -> pb.AuthUserGrantRoleResponse:
        return await self._admin.user_grant_role(request, self._who(context))

    async def user_revoke_role(self, request: pb.AuthUserRevokeRoleRequest, context: CallContext
                               ) -> pb.AuthUserRevokeRoleResponse:
        return await self._admin.user_revoke_role(request, self._who(context))

    async def role_add(self, request: pb.AuthRoleAddRequest, context: CallContext) -> pb.AuthRoleAddResponse:
        return await self._admin.role_add(request, self._who(context))

    async def role_get(self, request: pb.AuthRoleGetRequest, context: CallContext) -> pb.AuthRoleGetResponse:
        return await self._admin.role_get(request, self._who(context))

    async def role_list(self, request: pb.AuthRoleListRequest, context: CallContext) -> pb.AuthRoleListResponse:
        return await self._admin.role_list(request, self._who(context))

    async def role_delete(self, request: pb.AuthRoleDeleteRequest, context: CallContext
                          ) -> pb.AuthRoleDeleteResponse:
        return await self._admin.role_delete(request, self._who(context))

    async def role_grant_permission(self, request: pb.AuthRoleGrantPermissionRequest, context: CallContext
                                    ) -> pb.AuthRoleGrantPermissionResponse:
        return await self._admin.role_grant_permission(request, self._who(context))

    async def role_revoke_permission(self, request: pb.AuthRoleRevokePermissionRequest, context: CallContext
                                     ) -> pb.AuthRoleRevokePermissionResponse:
        return await self._admin.role_revoke_permission(request, self._who(context))
