//! Admission step 1: whose message this is. The tenant is the AUTH user,
//! or for relay networks without AUTH the configured default user; its
//! user group holds every rule the later steps apply. A message without a
//! group (no tenant, an unknown user, a user in a missing group) is
//! refused with 550 5.7.1 saying which of the three it is.

use std::sync::Arc;

use crate::engine::ClientInfo;
use crate::metrics::Refusal;
use crate::tenancy::{Tenancy, User, UserGroup};
use crate::values::Reply;

/// The tenant of a message, as found in the configuration snapshot.
pub(super) struct Tenant<'s> {
    /// The AUTH user or the default user; `None` when there is neither
    /// (a single-tenant setup has a group all the same).
    pub name: Option<String>,
    /// The user by that name, when it exists.
    pub user: Option<&'s User>,
    pub group: &'s Arc<UserGroup>,
}

/// Finds the tenant and its group, or the refusal of a message that has
/// none.
pub(super) fn resolve<'s>(
    snapshot: &'s Tenancy,
    client: &ClientInfo,
    default_user: Option<&str>,
) -> Result<Tenant<'s>, Reply> {
    let name = client
        .auth_user
        .clone()
        .or_else(|| default_user.map(str::to_owned));
    let user = name
        .as_ref()
        .and_then(|t| snapshot.users.get(t))
        .map(|u| u.as_ref());
    let group = snapshot
        .group_of(user)
        .ok_or_else(|| no_tenant(name.as_deref(), user, client))?;
    Ok(Tenant { name, user, group })
}

/// The refusal of a message that has no tenant in any user group.
fn no_tenant(tenant: Option<&str>, user: Option<&User>, client: &ClientInfo) -> Reply {
    crate::metrics::injection_refused(Refusal::NoTenant);
    let why = match (tenant, user) {
        (None, _) => format!(
            "Mail from {} without AUTH has no tenant: log in with SMTP AUTH, or have the \
             operator set smtp_in.default_user",
            client.peer.ip()
        ),
        (Some(name), None) => format!(
            "User `{name}` does not exist: create it, or have the operator change \
             smtp_in.default_user"
        ),
        (Some(name), Some(user)) => format!(
            "User `{name}` is in group `{}`, which does not exist: move the user to a user group",
            user.group
        ),
    };
    Reply::new(550, "5.7.1", why)
}
