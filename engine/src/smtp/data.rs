//! DATA in the session core: room in the listener's DATA budget, the
//! message read under `data_timeout`, the refusals a message can earn on
//! the way in, and the policy's reply once the message is whole.

use std::io;

use super::budget::{BUDGET_WAIT, Reservation};
use super::connection::{DataLimits, MAX_HEADER_BYTES, MAX_HEADER_LINES};
use super::session::{Flow, Policy, Session, too_big};
use crate::metrics::Refusal;
use crate::values::Reply;

fn over_budget() -> Reply {
    Reply::new(
        451,
        "4.3.1",
        "Too many messages in transit on this server right now: try again in a few minutes",
    )
}

impl<P: Policy> Session<P> {
    pub(super) async fn data(&mut self) -> io::Result<Flow> {
        let declared = match &self.tx {
            None => return Ok(self.refuse(Reply::new(503, "5.5.1", "Send MAIL FROM first"))),
            Some(tx) if tx.rcpts.is_empty() => {
                return Ok(self.refuse(Reply::new(
                    554,
                    "5.5.1",
                    "No valid recipients: send RCPT TO first",
                )));
            }
            Some(tx) => tx.params.size.unwrap_or(0),
        };
        let ctx = self.ctx.clone();
        let budget = &ctx.basics().guards.data_budget;
        let limits = DataLimits {
            max_size: self.limits().max_message_size,
            expected: usize::try_from(declared).unwrap_or(usize::MAX),
        };
        // All of a declared size at once, before the client sends a byte.
        let mut reservation = Reservation::default();
        if !budget
            .reserve(&mut reservation, limits.expected, BUDGET_WAIT)
            .await
        {
            self.tx = None;
            self.transaction_done();
            return Ok(self.reply(over_budget()));
        }
        self.conn()
            .queue_raw(b"354 End data with <CR><LF>.<CR><LF>\r\n");
        self.send().await?;
        let timeout = self.limits().data_timeout;
        let conn = self.conn.as_mut().expect("connection present");
        let read = conn.read_data(limits, budget, &mut reservation);
        let section = match tokio::time::timeout(timeout, read).await {
            Err(_) => {
                conn.queue_reply(&Reply::new(
                    421,
                    "4.4.2",
                    "Timeout while reading the message: closing the connection",
                ));
                return Ok(Flow::Close);
            }
            Ok(read) => match read? {
                Some(section) => section,
                None => return Ok(Flow::Close),
            },
        };
        let tx = self.tx.take().expect("checked above");
        self.transaction_done();
        if section.too_big {
            self.ctx.count_refusal(Refusal::TooBig);
            return Ok(self.refuse(too_big(limits.max_size)));
        }
        if section.header_too_big {
            self.ctx.count_refusal(Refusal::TooBig);
            return Ok(self.refuse(Reply::new(
                552,
                "5.3.4",
                format!(
                    "Header section too big: at most {MAX_HEADER_LINES} lines and {MAX_HEADER_BYTES} bytes"
                ),
            )));
        }
        if section.over_budget {
            return Ok(self.reply(over_budget()));
        }
        // The reservation is held until the reply: admission's bytes count.
        let reply = self
            .ctx
            .deliver(self.client.clone(), tx, section.body)
            .await;
        drop(reservation);
        Ok(self.reply(reply))
    }
}
