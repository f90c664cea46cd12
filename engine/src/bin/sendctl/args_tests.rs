//! Unit tests of the command line parser (no daemon needed).

use super::*;

fn usage(line: &str) -> String {
    let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    match parse(&argv) {
        Ok(_) => panic!("`{line}` parsed"),
        Err(Usage(message)) => message,
    }
}

fn request(line: &str) -> (String, Map<String, Value>) {
    let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    match parse(&argv).map(|i| i.command) {
        Ok(Command::Remote { cmd, args }) => (cmd, args),
        Ok(_) => panic!("`{line}`: not a request"),
        Err(Usage(m)) => panic!("`{line}`: {m}"),
    }
}

#[test]
fn unknown_and_valueless_flags_are_usage_errors() {
    let m = usage("queue suspend --campain x");
    assert!(
        m.contains("--campain") && m.contains("did you mean --campaign?"),
        "{m}"
    );
    let m = usage("queue list --tenent x");
    assert!(m.contains("did you mean --tenant?"), "{m}");
    let m = usage("queue suspend --campaign");
    assert_eq!(m, "--campaign needs a value");
    let m = usage("queue suspend --campaign --tenant t");
    assert_eq!(m, "--campaign needs a value");
    let m = usage("queue suspend --campaign a --campaign b");
    assert!(m.contains("given twice"), "{m}");
    let m = usage("status --verbose");
    assert!(m.contains("takes no flags"), "{m}");
    let m = usage("server get x --host h");
    assert!(m.contains("unknown flag --host"), "{m}");
    let m = usage("bounce parse f.eml --jsn");
    assert!(m.contains("did you mean --json?"), "{m}");
    let m = usage("queue delete --all=yes");
    assert!(m.contains("takes no value"), "{m}");
    let m = usage("fleet queue suspend --campain x");
    assert!(m.contains("did you mean --campaign?"), "{m}");
    let m = usage("fleet queue pause --campaign x");
    assert!(m.contains("suspend|resume|bounce|delete"), "{m}");
    let m = usage("fleet status extra");
    assert!(m.contains("unexpected argument `extra`"), "{m}");
}

#[test]
fn unknown_commands_name_the_nearest_and_operands_their_word() {
    let m = usage("queue lst");
    assert!(m.contains("did you mean `queue list`?"), "{m}");
    let m = usage("servr list");
    assert!(m.contains("did you mean `server list`?"), "{m}");
    let m = usage("queue");
    assert!(m.contains("`queue` takes summary|list"), "{m}");
    let m = usage("queue inspect");
    assert_eq!(m, "give the ID: sendctl queue inspect ID");
    let m = usage("domain records");
    assert_eq!(m, "give the DOMAIN: sendctl domain records DOMAIN");
}

#[test]
fn help_in_every_spelling() {
    for line in ["help", "--help", "-h", "queue --help", "help queue"] {
        let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert!(
            matches!(parse(&argv).map(|i| i.command), Ok(Command::Help { .. })),
            "{line}"
        );
    }
}

#[test]
fn known_flags_become_arguments() {
    let (cmd, args) = request("queue suspend --campaign c --older-than=2h");
    assert_eq!(cmd, "queue.suspend");
    assert_eq!(args["campaign"], "c");
    assert_eq!(args["older_than"], "2h");
    let (_, args) = request("queue delete --all");
    assert_eq!(args["all"], true);
    let (_, args) = request("suppression list --limit 5");
    assert_eq!(args["limit"], 5);
    let (_, args) = request("server put --name s --host h --port 25 --password p");
    assert_eq!(args["auth"]["password"], "p");
    assert_eq!(args["port"], 25);
    let (_, args) =
        request("server put --name s --host h --tls-verify false --rate-per-second 2.5");
    assert_eq!(args["tls_verify"], false);
    assert_eq!(args["rate_per_second"], 2.5);
    let (_, args) = request("group put --name g --servers a,b --daily-limit 10");
    assert_eq!(args["transactional"], json!(["a", "b"]));
    assert_eq!(args["daily_limit"], 10);
    let m = usage("server put --name s --tls-verify maybe");
    assert!(
        m.contains("--tls-verify: `maybe` is not true or false"),
        "{m}"
    );
    let (cmd, args) = request("server test direct --to a@b.example");
    assert_eq!(
        (cmd.as_str(), &args["name"]),
        ("server.test", &json!("direct"))
    );
}

/// Every command sendctl sends is one the daemon knows, so the flags
/// drawn from the daemon's table are never empty by mistake.
#[test]
fn every_command_is_in_the_daemons_catalogue() {
    for line in [
        "status",
        "hello",
        "server list",
        "server get a",
        "server test a",
        "server enable a",
        "server put --name a",
        "domain put d.example --owner u",
        "domain records d.example",
        "dkim generate d.example",
        "dkim import d.example --selector s",
        "queue summary",
        "queue inspect 0011223344556677",
        "queue bounce --all",
        "suppression add a@b.example",
        "fleet status --all",
        "fleet queue suspend --campaign c",
        "fleet queue delete --tenant t",
    ] {
        let (cmd, _) = request(line);
        assert!(arg_fields(&cmd).is_some(), "{cmd}");
    }
}
