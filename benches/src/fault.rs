//! Fault rules of the sink: `PHASE[~SUBSTRING][#COUNT]=ACTION`.
//!
//! PHASE is one of greeting, ehlo, mail, rcpt, data, dot. SUBSTRING is matched
//! case-insensitively against the phase's argument (see [`Phase`]). COUNT
//! limits the rule to its first COUNT matches in the whole process. ACTION is
//! `CODE TEXT`, `disconnect` or `stall`. The first rule that matches wins.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Where in the session a rule fires, and what its SUBSTRING is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// On connect, before the 220. Argument: the client's IP address.
    Greeting,
    /// EHLO or HELO. Argument: the name the client gave.
    Ehlo,
    /// MAIL FROM. Argument: the sender address.
    Mail,
    /// RCPT TO. Argument: the recipient address.
    Rcpt,
    /// The DATA command. Argument: the envelope, "sender rcpt1 rcpt2 ...".
    Data,
    /// After the final dot. Argument: the envelope, then the Message-ID.
    Dot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this reply instead of the normal one. A reply below 400
    /// lets the command succeed; 421 also closes the connection.
    Reply { code: u16, text: String },
    /// Close the socket without replying.
    Disconnect,
    /// Never answer; keep the socket open until the client goes.
    Stall,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FaultSpecError {
    #[error("fault spec {0:?} has no '=ACTION'")]
    NoAction(String),
    #[error("unknown phase {0:?} (greeting, ehlo, mail, rcpt, data, dot)")]
    UnknownPhase(String),
    #[error("bad #COUNT {0:?}: expected a positive number")]
    BadCount(String),
    #[error("bad action {0:?}: expected 'CODE TEXT' (200-599), 'disconnect' or 'stall'")]
    BadAction(String),
}

#[derive(Debug)]
pub struct FaultRule {
    phase: Phase,
    /// Lowercased, so matching is case-insensitive.
    substring: Option<String>,
    /// Matches left, for rules with #COUNT.
    remaining: Option<AtomicU64>,
    action: FaultAction,
}

impl FaultRule {
    /// Tells whether this rule fires for `argument_lower`, using up one of its
    /// matches if it counts them.
    fn fires(&self, phase: Phase, argument_lower: &str) -> bool {
        if self.phase != phase {
            return false;
        }
        if let Some(substring) = &self.substring
            && !argument_lower.contains(substring.as_str())
        {
            return false;
        }
        match &self.remaining {
            None => true,
            Some(remaining) => remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok(),
        }
    }
}

impl FromStr for FaultRule {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (selector, action) = spec
            .split_once('=')
            .ok_or_else(|| FaultSpecError::NoAction(spec.to_string()))?;
        let (selector, count) = match selector.rsplit_once('#') {
            Some((rest, count)) => (rest, Some(parse_count(count)?)),
            None => (selector, None),
        };
        let (phase, substring) = match selector.split_once('~') {
            Some((phase, substring)) => (phase, Some(substring.to_lowercase())),
            None => (selector, None),
        };
        Ok(FaultRule {
            phase: parse_phase(phase)?,
            substring,
            remaining: count.map(AtomicU64::new),
            action: parse_action(action)?,
        })
    }
}

fn parse_phase(phase: &str) -> Result<Phase, FaultSpecError> {
    match phase.to_ascii_lowercase().as_str() {
        "greeting" => Ok(Phase::Greeting),
        "ehlo" | "helo" => Ok(Phase::Ehlo),
        "mail" => Ok(Phase::Mail),
        "rcpt" => Ok(Phase::Rcpt),
        "data" => Ok(Phase::Data),
        "dot" => Ok(Phase::Dot),
        _ => Err(FaultSpecError::UnknownPhase(phase.to_string())),
    }
}

fn parse_count(count: &str) -> Result<u64, FaultSpecError> {
    match count.parse::<u64>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(FaultSpecError::BadCount(count.to_string())),
    }
}

fn parse_action(action: &str) -> Result<FaultAction, FaultSpecError> {
    let action = action.trim();
    match action.to_ascii_lowercase().as_str() {
        "disconnect" => return Ok(FaultAction::Disconnect),
        "stall" => return Ok(FaultAction::Stall),
        _ => {}
    }
    let bad = || FaultSpecError::BadAction(action.to_string());
    let (code, text) = action.split_once(' ').unwrap_or((action, ""));
    if code.len() != 3 {
        return Err(bad());
    }
    let code: u16 = code.parse().map_err(|_| bad())?;
    if !(200..600).contains(&code) {
        return Err(bad());
    }
    Ok(FaultAction::Reply {
        code,
        text: text.trim().to_string(),
    })
}

/// All rules given on the command line, in order.
#[derive(Debug, Default)]
pub struct FaultRules {
    rules: Vec<FaultRule>,
}

impl FaultRules {
    pub fn new(rules: Vec<FaultRule>) -> Self {
        FaultRules { rules }
    }

    /// The action of the first rule that fires for this phase and argument.
    pub fn check(&self, phase: Phase, argument: &str) -> Option<&FaultAction> {
        if !self.rules.iter().any(|rule| rule.phase == phase) {
            return None;
        }
        let argument_lower = argument.to_lowercase();
        self.rules
            .iter()
            .find(|rule| rule.fires(phase, &argument_lower))
            .map(|rule| &rule.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(specs: &[&str]) -> FaultRules {
        FaultRules::new(specs.iter().map(|spec| spec.parse().unwrap()).collect())
    }

    #[test]
    fn parses_all_parts() {
        let rule: FaultRule = "rcpt~Reject#2=550 5.1.1 no such user".parse().unwrap();
        assert_eq!(rule.phase, Phase::Rcpt);
        assert_eq!(rule.substring.as_deref(), Some("reject"));
        assert_eq!(rule.remaining.as_ref().unwrap().load(Ordering::SeqCst), 2);
        assert_eq!(
            rule.action,
            FaultAction::Reply {
                code: 550,
                text: "5.1.1 no such user".into()
            }
        );
        let rule: FaultRule = "dot=disconnect".parse().unwrap();
        assert_eq!(rule.action, FaultAction::Disconnect);
        let rule: FaultRule = "mail=stall".parse().unwrap();
        assert_eq!(rule.action, FaultAction::Stall);
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            "rcpt".parse::<FaultRule>(),
            Err(FaultSpecError::NoAction(_))
        ));
        assert!(matches!(
            "quit=421 bye".parse::<FaultRule>(),
            Err(FaultSpecError::UnknownPhase(_))
        ));
        assert!(matches!(
            "dot#0=451 x".parse::<FaultRule>(),
            Err(FaultSpecError::BadCount(_))
        ));
        assert!(matches!(
            "dot=explode".parse::<FaultRule>(),
            Err(FaultSpecError::BadAction(_))
        ));
        assert!(matches!(
            "dot=999 x".parse::<FaultRule>(),
            Err(FaultSpecError::BadAction(_))
        ));
    }

    #[test]
    fn substring_is_case_insensitive() {
        let rules = rules(&["rcpt~reject=550 5.1.1 no"]);
        assert!(rules.check(Phase::Rcpt, "REJECT.me@example.net").is_some());
        assert!(rules.check(Phase::Rcpt, "ok@example.net").is_none());
        assert!(rules.check(Phase::Mail, "reject@example.net").is_none());
    }

    #[test]
    fn count_stops_matching_and_next_rule_wins() {
        let rules = rules(&["dot#1=451 4.3.0 later", "dot=250 fine"]);
        let first = rules.check(Phase::Dot, "").unwrap();
        assert!(matches!(first, FaultAction::Reply { code: 451, .. }));
        let second = rules.check(Phase::Dot, "").unwrap();
        assert!(matches!(second, FaultAction::Reply { code: 250, .. }));
    }
}
