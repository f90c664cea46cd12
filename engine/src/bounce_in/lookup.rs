//! What the intake knows about the recipient a bounce is about: this
//! node's delivered index (or the spool, for a message still there), and in
//! a fleet the shared index in PostgreSQL for mail another node sent
//! (`cluster::delivered`).
//!
//! Which one a tag goes to: a standalone tag, or a fleet tag naming this
//! node, is looked up here first; a fleet tag naming another node, and a
//! standalone tag this node does not know, in the fleet's index. A fleet
//! lookup that fails (PostgreSQL down, timed out) is an error, answered 451,
//! so the reporting MTA brings the bounce again once it is back; a row not
//! found after a few seconds (pruned, dropped, unknown node) gives an event
//! with what the report says and no tenant, as for a pruned local message.

use sendengine_bounces::verp::{self, Tagged};
use sendengine_queue::Delivered;

use super::intake::{Intake, IntakeError, Target};
use crate::cluster::delivered::Found;

impl Intake {
    /// The index row of the recipient `target` names, wherever it is.
    pub(super) fn delivered(&self, target: &Target) -> Result<Option<Delivered>, IntakeError> {
        let local_first = self.foreign_node(target).is_none();
        if local_first {
            let row = self.local_delivered(target)?;
            // This node's own fleet tag: its rows are the ones it has.
            if row.is_some() || target.node.is_some() {
                return Ok(row);
            }
        }
        let Some(fleet) = &self.fleet else {
            return Ok(None);
        };
        let tagged = Tagged {
            node: target.node,
            id: target.id,
            rcpt: target.rcpt,
        };
        match fleet.lookup_blocking(tagged) {
            Ok(Found::Row(row)) => Ok(Some(row)),
            Ok(Found::Missing) => Ok(None),
            Ok(Found::UnknownNode(node)) => {
                log::warn!(
                    "bounce for message {} names fleet node number {node}, which no node of this fleet has: tied to no tenant (a tag from another fleet with the same secret, or node_numbers was reset)",
                    sendengine_queue::format_id(target.id)
                );
                Ok(None)
            }
            // Logged once per outage by `SharedDelivered`.
            Err(e) => Err(IntakeError {
                message: format!(
                    "looking the bounce up in the fleet's delivered index failed: {e}"
                ),
                logged: true,
            }),
        }
    }

    /// The number of the other fleet node whose mail `target` is about;
    /// none for this node's mail and for standalone tags.
    pub(super) fn foreign_node(&self, target: &Target) -> Option<u32> {
        let mine = self.fleet.as_ref().and_then(|f| f.node());
        target.node.filter(|&n| Some(n) != mine)
    }

    /// This node's index row; for a message still in the spool (another
    /// recipient pending) without one, what the spool has.
    fn local_delivered(&self, target: &Target) -> Result<Option<Delivered>, IntakeError> {
        let read_failed = |e| IntakeError::new(format!("reading the delivered index failed: {e}"));
        if let Some(row) = self
            .spool
            .delivered(target.id, target.rcpt)
            .map_err(read_failed)?
        {
            return Ok(Some(row));
        }
        let Some(message) = self.spool.load(target.id).map_err(read_failed)? else {
            return Ok(None);
        };
        let meta = &message.meta;
        Ok(Some(Delivered {
            id: target.id,
            rcpt: target.rcpt,
            tenant: meta.tenant.clone(),
            group: meta.group.clone(),
            channel: meta.channel.clone(),
            campaign: meta.campaign.clone(),
            recipient: message
                .recipients
                .get(target.rcpt as usize)
                .cloned()
                .unwrap_or_default(),
            header_message_id: crate::transform::header_value(&message.body, "Message-ID")
                .unwrap_or_default(),
            route: meta.route.clone(),
            time_ms: 0,
        }))
    }
}

impl Target {
    /// The recipient a checked tag names, reached at `return_path`.
    pub fn of(tagged: verp::Tagged, return_path: String) -> Target {
        Target {
            node: tagged.node,
            id: tagged.id,
            rcpt: tagged.rcpt,
            return_path,
        }
    }

    pub(super) fn tagged(&self) -> verp::Tagged {
        verp::Tagged {
            node: self.node,
            id: self.id,
            rcpt: self.rcpt,
        }
    }
}
