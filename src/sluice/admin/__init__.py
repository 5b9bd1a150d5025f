"""The admin API and its manager: keys, users, teams, roles and the audit log, managed over HTTP and by the CLI.

- ``sluice.admin.manager``: the Manager, which checks, stores and audits each change (the admin API and
  ``sluice keys|users|teams|roles|audit`` both call it);
- ``sluice.admin.bodies``: the request bodies (typed structs) and the checks of their fields;
- ``sluice.admin.grants``: who makes a change (``Actor``) and the rule that nobody grants more than they hold;
- ``sluice.admin.api``: the /admin routes (AdminApi), mounted by the gateway when authentication is on
  (``mount_admin``).

It sits above auth (principals, RBAC, the audit log), the limits of the pipeline (a key's own rate
limit and quota), the store and the config, and below the server, which it never imports: the
gateway hands it its route table to fill.
"""

from .api import AdminApi, mount_admin

__all__ = ["AdminApi", "mount_admin"]
