//! One mail transaction on an open connection: MAIL, RCPT for each recipient,
//! DATA, the dot-stuffed body, and the final reply, with one reply per
//! recipient as the result. With PIPELINING (RFC 2920) the envelope goes out
//! in groups and the replies are read back in order; without it, in lockstep.
//! A caller with the next message at hand can leave the final reply unread
//! (`proceed` with `leave_final`) and `open` the next transaction, whose
//! envelope then leaves in the same write as the end of the message before
//! (RFC 2920 3.1); `finish` reads that final reply.
//! A refused recipient keeps its own RCPT reply; the others still get the
//! message (partial acceptance). Recipients put off with 452 (too many
//! recipients) get a transaction of their own right after, on the same
//! connection.

use std::iter;

use super::commands::{
    Command, EnvelopeReplies, START_MAIL_INPUT, check_address, command_lines, expect_completion,
};
use super::{Connection, ContentNeeds, Envelope, Phase, Reply, SessionError};

/// Commands per pipelined group. Bounded so that a server answering a long
/// group cannot fill its send buffer while we are still writing (deadlock).
const MAX_PIPELINE_GROUP: usize = 100;

/// The RCPT reply of a server that takes no more recipients in this
/// transaction; the rest go in the next one.
const TOO_MANY_RECIPIENTS: u16 = 452;

/// The reply of a server that takes mail only after AUTH (RFC 4954).
const AUTHENTICATION_REQUIRED: u16 = 530;

/// Transactions one `send` may run for a server that takes few recipients
/// at a time, before the rest are left to a later retry.
const MAX_TRANSACTIONS_PER_SEND: usize = 100;

/// A transaction whose first group of envelope commands has been written
/// and whose replies are not read yet: [`Connection::proceed`] goes on.
pub struct Opened {
    state: Opening,
}

enum Opening {
    /// Nothing was sent: every recipient was decided locally.
    Decided(Vec<Reply>),
    Sent {
        plan: Vec<Command>,
        mail_command: String,
        /// Recipients decided so far (bad syntax), by index.
        outcomes: Vec<Option<Reply>>,
    },
}

/// A transaction whose message went out up to its end of data and whose
/// final reply is not read yet: [`Connection::finish`] reads it.
pub struct AwaitingFinal {
    /// Recipients decided before the body (refused RCPT, bad syntax).
    outcomes: Vec<Option<Reply>>,
}

/// How [`Connection::proceed`] left the transaction.
pub enum Sent {
    /// One reply per recipient, in input order.
    Done(Vec<Reply>),
    /// The message is written (perhaps still in the write buffer); its
    /// final reply is to be read.
    AwaitingFinal(AwaitingFinal),
}

impl Connection {
    /// One transaction. Returns one Reply per recipient in input order: the
    /// reply that decided that recipient (MAIL's reply if MAIL failed, the RCPT
    /// reply if refused, DATA's reply if DATA was refused, else the final reply
    /// after the dot). Replies made up locally (size over the server's limit,
    /// bad address syntax, SMTPUTF8 needed but not offered) send nothing.
    /// `body` is the message in CRLF, not dot-stuffed.
    /// Err only for connection-level failures: then drop the connection.
    pub async fn send(
        &mut self,
        envelope: &Envelope<'_>,
        body: &[u8],
    ) -> Result<Vec<Reply>, SessionError> {
        let opened = self.open(envelope, body).await?;
        match self.proceed(opened, envelope, body, false).await? {
            Sent::Done(replies) => Ok(replies),
            Sent::AwaitingFinal(awaiting) => self.finish(awaiting).await,
        }
    }

    /// Starts a transaction: decides what needs no round trip and writes the
    /// first group of envelope commands (the whole envelope when pipelining)
    /// without reading a reply. The end of a message left in the write
    /// buffer ([`Sent::AwaitingFinal`]) leaves in the same write, so its
    /// final reply and this envelope's replies come back together: RFC 2920
    /// 3.1 lets message content open a pipelined group. Read that final
    /// reply ([`Connection::finish`]) before calling `proceed` on this one.
    pub async fn open(
        &mut self,
        envelope: &Envelope<'_>,
        body: &[u8],
    ) -> Result<Opened, SessionError> {
        self.check_usable()?;
        let result = self.open_transaction(envelope, body).await;
        self.note_failure(result)
    }

    /// Reads the envelope replies of an opened transaction, sends the rest
    /// of the envelope and the body. With `leave_final` and a server that
    /// pipelines, the final reply is left unread ([`Sent::AwaitingFinal`])
    /// so the next transaction's envelope can follow the body at once; the
    /// end of the body may then still sit in the write buffer.
    pub async fn proceed(
        &mut self,
        opened: Opened,
        envelope: &Envelope<'_>,
        body: &[u8],
        leave_final: bool,
    ) -> Result<Sent, SessionError> {
        self.check_usable()?;
        let result = self
            .proceed_transactions(opened, envelope, body, leave_final)
            .await;
        self.note_failure(result)
    }

    /// Sends what is left of the message and reads its final reply: one
    /// Reply per recipient, as `send` returns them.
    pub async fn finish(&mut self, awaiting: AwaitingFinal) -> Result<Vec<Reply>, SessionError> {
        self.check_usable()?;
        let result = self.read_final(awaiting.outcomes).await;
        self.note_failure(result)
    }

    fn check_usable(&self) -> Result<(), SessionError> {
        if self.broken {
            return Err(SessionError::Protocol {
                phase: Phase::Mail,
                message: "the connection failed earlier and must be dropped".to_string(),
            });
        }
        Ok(())
    }

    /// After a failure the session state is unknown: nothing more is sent.
    fn note_failure<T>(&mut self, result: Result<T, SessionError>) -> Result<T, SessionError> {
        self.broken |= result.is_err();
        result
    }

    /// The opened transaction, then more on the same connection for the
    /// recipients the server put off with 452 (too many recipients, RFC 5321
    /// 4.5.3.1.10), as long as each round decides somebody.
    async fn proceed_transactions(
        &mut self,
        opened: Opened,
        envelope: &Envelope<'_>,
        body: &[u8],
        leave_final: bool,
    ) -> Result<Sent, SessionError> {
        let mut replies = match self
            .proceed_one(opened, envelope, body, leave_final)
            .await?
        {
            Sent::Done(replies) => replies,
            awaiting => return Ok(awaiting),
        };
        let mut pending = replies.len();
        for _ in 1..MAX_TRANSACTIONS_PER_SEND {
            let put_off: Vec<usize> = (0..replies.len())
                .filter(|&index| replies[index].code == TOO_MANY_RECIPIENTS)
                .collect();
            if put_off.is_empty() || put_off.len() >= pending || self.broken {
                break;
            }
            pending = put_off.len();
            let recipients: Vec<&str> = put_off
                .iter()
                .map(|&index| envelope.recipients[index])
                .collect();
            let rest = Envelope {
                mail_from: envelope.mail_from,
                recipients: &recipients,
            };
            let opened = self.open_transaction(&rest, body).await?;
            let Sent::Done(more) = self.proceed_one(opened, &rest, body, false).await? else {
                return Err(unexpected_state("a final reply was left unread"));
            };
            for (index, reply) in put_off.into_iter().zip(more) {
                replies[index] = reply;
            }
        }
        Ok(Sent::Done(replies))
    }

    async fn open_transaction(
        &mut self,
        envelope: &Envelope<'_>,
        body: &[u8],
    ) -> Result<Opened, SessionError> {
        let decided = |replies| Opened {
            state: Opening::Decided(replies),
        };
        let needs = ContentNeeds::of(envelope, body);
        if let Some(refusal) = self.refuse_locally(envelope, &needs) {
            return Ok(decided(vec![refusal; envelope.recipients.len()]));
        }
        let outcomes: Vec<Option<Reply>> = envelope
            .recipients
            .iter()
            .map(|recipient| check_address(recipient, "5.1.3", "recipient").err())
            .collect();
        let recipients_to_send: Vec<Command> = (0..outcomes.len())
            .filter(|&index| outcomes[index].is_none())
            .map(Command::Rcpt)
            .collect();
        if recipients_to_send.is_empty() {
            return Ok(decided(outcomes.into_iter().flatten().collect()));
        }
        let plan: Vec<Command> = iter::once(Command::Mail)
            .chain(recipients_to_send)
            .chain(iter::once(Command::Data))
            .collect();
        let mail_command = self.mail_command(envelope, body, &needs);
        if let Some(first) = plan.chunks(self.group_size()).next() {
            self.send_group(first, &mail_command, envelope).await?;
        }
        Ok(Opened {
            state: Opening::Sent {
                plan,
                mail_command,
                outcomes,
            },
        })
    }

    /// One transaction after `open_transaction`: the final reply is left
    /// unread only when asked, the server pipelines, and no recipient was
    /// put off (those need another transaction once this one is over).
    async fn proceed_one(
        &mut self,
        opened: Opened,
        envelope: &Envelope<'_>,
        body: &[u8],
        leave_final: bool,
    ) -> Result<Sent, SessionError> {
        let (plan, mail_command, mut outcomes) = match opened.state {
            Opening::Decided(replies) => return Ok(Sent::Done(replies)),
            Opening::Sent {
                plan,
                mail_command,
                outcomes,
            } => (plan, mail_command, outcomes),
        };
        let replies = self
            .exchange_envelope(&plan, envelope, &mail_command, &mut outcomes)
            .await?;
        let put_off = outcomes
            .iter()
            .flatten()
            .any(|reply| reply.code == TOO_MANY_RECIPIENTS);
        let leave_final = leave_final && self.capabilities.pipelining && !put_off;
        match self.conclude(replies, body).await? {
            Concluded::Decided(reply) => Ok(Sent::Done(decide(outcomes, reply))),
            Concluded::BodyWritten if leave_final => {
                Ok(Sent::AwaitingFinal(AwaitingFinal { outcomes }))
            }
            Concluded::BodyWritten => self.read_final(outcomes).await.map(Sent::Done),
        }
    }

    /// Flushes the end of the message and reads the reply to its dot.
    async fn read_final(
        &mut self,
        outcomes: Vec<Option<Reply>>,
    ) -> Result<Vec<Reply>, SessionError> {
        self.transport
            .flush(Phase::Body, self.timeouts.data_block)
            .await?;
        let phase = Phase::DataEnd;
        let reply = expect_completion(phase, self.read(phase).await?)?;
        Ok(decide(outcomes, reply))
    }

    /// Refusals that apply to the whole message and need no server round trip.
    fn refuse_locally(&self, envelope: &Envelope<'_>, needs: &ContentNeeds) -> Option<Reply> {
        if !envelope.mail_from.is_empty()
            && let Err(reply) = check_address(envelope.mail_from, "5.1.7", "sender")
        {
            return Some(reply);
        }
        self.content_refusal(needs)
    }

    fn mail_command(&self, envelope: &Envelope<'_>, body: &[u8], needs: &ContentNeeds) -> String {
        let mut command = format!("MAIL FROM:<{}>", envelope.mail_from);
        if self.capabilities.size.is_some() {
            command.push_str(&format!(" SIZE={}", body.len()));
        }
        if self.capabilities.eight_bit_mime && needs.eight_bit() {
            command.push_str(" BODY=8BITMIME");
        }
        if self.capabilities.smtp_utf8 && needs.smtputf8() {
            command.push_str(" SMTPUTF8");
        }
        command
    }

    fn group_size(&self) -> usize {
        if self.capabilities.pipelining {
            MAX_PIPELINE_GROUP
        } else {
            1
        }
    }

    async fn send_group(
        &mut self,
        group: &[Command],
        mail_command: &str,
        envelope: &Envelope<'_>,
    ) -> Result<(), SessionError> {
        let text = command_lines(group, mail_command, envelope);
        let phase = group.first().map_or(Phase::Mail, |first| first.phase());
        let after = self.timeouts.for_phase(phase);
        self.transport
            .send_all(phase, after, &[text.as_bytes()])
            .await
    }

    /// Reads the replies to the plan group by group (the whole envelope at
    /// once when pipelining, one command at a time otherwise), sending each
    /// group after the first (`open_transaction` sent that one).
    async fn exchange_envelope(
        &mut self,
        plan: &[Command],
        envelope: &Envelope<'_>,
        mail_command: &str,
        outcomes: &mut [Option<Reply>],
    ) -> Result<EnvelopeReplies, SessionError> {
        let mut replies = EnvelopeReplies::default();
        for (index, group) in plan.chunks(self.group_size()).enumerate() {
            if index > 0 {
                if group
                    .first()
                    .is_some_and(|&first| replies.stop_before(first))
                {
                    break;
                }
                self.send_group(group, mail_command, envelope).await?;
            }
            for &command in group {
                let reply = self.read(command.phase()).await?;
                replies.record(command, reply, outcomes)?;
            }
        }
        Ok(replies)
    }

    /// Finishes the envelope: either a reply decides every recipient not
    /// refused on its own, or the body is written (and its dot with it).
    async fn conclude(
        &mut self,
        replies: EnvelopeReplies,
        body: &[u8],
    ) -> Result<Concluded, SessionError> {
        let data_started = replies.data_started();
        let EnvelopeReplies {
            mail,
            accepted,
            data,
        } = replies;
        let Some(mail) = mail else {
            return Err(unexpected_state("no reply to MAIL"));
        };
        // 530: the server wants authentication this session does not have
        // (RFC 4954). That is the relay's or our configuration, not the
        // recipients: a session failure (deferred, the group's next server
        // tried), never a bounce of everything queued.
        if mail.code == AUTHENTICATION_REQUIRED {
            return Err(SessionError::Rejected {
                phase: Phase::Mail,
                reply: mail,
            });
        }
        if !mail.is_positive() || accepted.is_empty() {
            if data_started {
                self.end_empty_data().await?;
            }
            if mail.is_positive() {
                self.reset_or_drop().await;
            }
            // With MAIL accepted, every recipient was refused by its own RCPT
            // reply, so this reply decides no one.
            return Ok(Concluded::Decided(mail));
        }
        let Some(data) = data else {
            return Err(unexpected_state("DATA was not sent"));
        };
        if data.code != START_MAIL_INPUT {
            self.reset_or_drop().await;
            return Ok(Concluded::Decided(data));
        }
        // Nothing is asked of the server now. Anything it sent already (a
        // reply before the message) would be read as the message's final
        // reply: the conversation is out of step, and the body stays here.
        if self.transport.has_unsolicited_input() {
            return Err(SessionError::Protocol {
                phase: Phase::Data,
                message: "the server sent more than its 354 before the message was sent \
                          (a reply to nothing, or a close): the message was not sent"
                    .to_string(),
            });
        }
        self.transport
            .write_body(Phase::Body, self.timeouts.data_block, body)
            .await?;
        Ok(Concluded::BodyWritten)
    }

    /// RSET after replies that decided the transaction: those stand whatever
    /// the RSET gets. A server that closes after a refusal (many do) fails
    /// the RSET; the connection is then dropped, not the decisions.
    async fn reset_or_drop(&mut self) {
        if self.reset().await.is_err() {
            self.broken = true;
        }
    }

    /// The server said 354 though no recipient is valid (possible when
    /// pipelining): the only way out of DATA is an empty message (RFC 2920 3.1).
    async fn end_empty_data(&mut self) -> Result<(), SessionError> {
        let phase = Phase::DataEnd;
        self.transport
            .send_line(phase, self.timeouts.data_block, ".")
            .await?;
        self.read(phase).await.map(drop)
    }

    /// RSET after a transaction that did not end with the dot, so the next
    /// transaction starts clean.
    async fn reset(&mut self) -> Result<(), SessionError> {
        let reply = self.command(Phase::Rset, "RSET").await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(SessionError::Rejected {
                phase: Phase::Rset,
                reply,
            })
        }
    }
}

/// Where the envelope left the transaction.
enum Concluded {
    /// No body was sent: this reply decides every recipient still open.
    Decided(Reply),
    /// The body and its dot are written; the final reply is to be read.
    BodyWritten,
}

/// Each recipient's reply: its own where one decided it early, else the
/// reply that decided the transaction.
fn decide(outcomes: Vec<Option<Reply>>, decided: Reply) -> Vec<Reply> {
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| decided.clone()))
        .collect()
}

fn unexpected_state(message: &str) -> SessionError {
    SessionError::Protocol {
        phase: Phase::Mail,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_checks() {
        assert!(check_address("user@example.com", "5.1.3", "recipient").is_ok());
        assert!(check_address("\"odd user\"@example.com", "5.1.3", "recipient").is_ok());
        for bad in [
            "",
            "a\r\nRCPT TO:<x@y>",
            "a>b@c",
            "a<b@c",
            "nul\0@x",
            &"a".repeat(300),
        ] {
            let reply = check_address(bad, "5.1.3", "recipient").unwrap_err();
            assert_eq!(
                (reply.code, reply.enhanced.as_deref()),
                (501, Some("5.1.3")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_refused_mail_overrides_rcpt_replies() {
        let mut replies = EnvelopeReplies::default();
        let mut outcomes = vec![None, None];
        let refused = Reply::local(451, "4.3.0", "try later");
        replies
            .record(Command::Mail, refused, &mut outcomes)
            .unwrap();
        let bad_sequence = Reply::local(503, "5.5.1", "need MAIL");
        replies
            .record(Command::Rcpt(0), bad_sequence, &mut outcomes)
            .unwrap();
        assert_eq!(outcomes, vec![None, None]);
        assert!(replies.stop_before(Command::Rcpt(1)));
    }

    #[test]
    fn data_needs_an_accepted_recipient() {
        let mut replies = EnvelopeReplies::default();
        let mut outcomes = vec![None];
        let ok = Reply::local(250, "2.1.0", "ok");
        replies.record(Command::Mail, ok, &mut outcomes).unwrap();
        assert!(!replies.stop_before(Command::Rcpt(0)));
        let no_user = Reply::local(550, "5.1.1", "no such user");
        replies
            .record(Command::Rcpt(0), no_user.clone(), &mut outcomes)
            .unwrap();
        assert_eq!(outcomes, vec![Some(no_user)]);
        assert!(replies.stop_before(Command::Data));
        let wrong = Reply::local(250, "2.0.0", "DATA ok?");
        assert!(replies.record(Command::Data, wrong, &mut outcomes).is_err());
    }
}
