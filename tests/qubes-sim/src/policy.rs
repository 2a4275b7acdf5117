//! qrexec policy, Qubes 4.1+ format, parsed and evaluated as dom0 does.
//!
//! Follows QubesOS/qubes-core-qrexec `qrexec/policy/parser.py`:
//! - files: the regular files of the directory whose name ends in `.policy` and does not
//!   start with `.`, in lexical (C-locale) order (`filter_filepaths`); one such name
//!   outside `[0-9a-z_.-]` makes the whole policy refuse everything;
//! - lines: stripped; empty lines and lines starting with `#` skipped; `!include FILE` and
//!   `!include-dir DIR` (relative to the policy directory) read further files;
//!   otherwise `SERVICE ARGUMENT SOURCE TARGET ACTION [KEY=VALUE...]` (`Rule.from_line`);
//! - any syntax error anywhere fails the whole policy: every call is refused, as
//!   `FilePolicy` raising `PolicySyntaxError` makes qrexec-policy-daemon refuse;
//! - tokens: which `@keyword` is valid in which column is `VMToken`'s class hierarchy;
//!   `dom0` is an alias of `@adminvm`;
//! - evaluation: the first rule whose service, argument, source and target match decides
//!   (`find_matching_rule`); no match refuses; `allow` goes to `target=` or to the
//!   requested target and refuses `@default` left unresolved; `ask` has no user to ask
//!   here and refuses as `AskResolution.execute` does when nobody answers.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Characters of service names and arguments (qrexec/__init__.py RPCNAME_ALLOWED_CHARSET).
fn is_rpcname_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+')
}

/// Characters of policy file names (parser.py FILENAME_ALLOWED_CHARSET).
fn is_filename_char(c: char) -> bool {
    c.is_ascii_digit() || c.is_ascii_lowercase() || matches!(c, '_' | '.' | '-')
}

/// `!include` depth limit: an include cycle would otherwise recurse forever (Python would
/// stop at its recursion limit, which also refuses everything).
const MAX_INCLUDE_DEPTH: usize = 16;

/// A policy file problem: the whole policy refuses every call while it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

/// A qube or `@keyword` in a policy column or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Name(String),
    AdminVm,
    AnyVm,
    Default,
    Type(String),
    Tag(String),
    DispVm,
    DispVmTemplate(String),
    DispVmTag(String),
}

/// Where a token appears; decides which keywords are valid (parser.py class hierarchy:
/// `AnyVM(Source, Target)`, `DefaultVM(Target, IntendedTarget)`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Source,
    Target,
    Redirect,
    Intended,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Source => "source",
            Column::Target => "target",
            Column::Redirect => "redirect",
            Column::Intended => "intendedtarget",
        }
    }
}

impl Token {
    /// Parses a token valid in `column` (parser.py `VMToken.__new__`).
    pub fn parse(text: &str, column: Column) -> Result<Token, String> {
        use Column::*;
        let text = if text == "dom0" { "@adminvm" } else { text };
        if !text.starts_with('@') {
            return Ok(Token::Name(text.to_owned()));
        }
        let invalid = || format!("invalid {} token: {text:?}", column.name());
        let allowed = |cols: &[Column]| cols.contains(&column);
        let nonempty = |prefix: &str, v: &str| {
            if v.is_empty() {
                Err(format!("invalid empty {prefix} token: {text:?}"))
            } else {
                Ok(v.to_owned())
            }
        };
        let tok = match text {
            "@adminvm" if allowed(&[Target, Redirect, Intended]) => Token::AdminVm,
            "@anyvm" if allowed(&[Source, Target]) => Token::AnyVm,
            "@default" if allowed(&[Target, Intended]) => Token::Default,
            "@dispvm" if allowed(&[Target, Redirect, Intended]) => Token::DispVm,
            _ => {
                if let Some(v) = text.strip_prefix("@dispvm:@tag:") {
                    if !allowed(&[Source, Target]) {
                        return Err(invalid());
                    }
                    Token::DispVmTag(nonempty("@dispvm:@tag:", v)?)
                } else if let Some(v) = text.strip_prefix("@dispvm:") {
                    if !allowed(&[Source, Target, Redirect, Intended]) || v.starts_with('@') {
                        return Err(invalid());
                    }
                    Token::DispVmTemplate(nonempty("@dispvm:", v)?)
                } else if let Some(v) = text.strip_prefix("@type:") {
                    if !allowed(&[Source, Target]) || v.starts_with('@') {
                        return Err(invalid());
                    }
                    Token::Type(nonempty("@type:", v)?)
                } else if let Some(v) = text.strip_prefix("@tag:") {
                    if !allowed(&[Source, Target]) || v.starts_with('@') {
                        return Err(invalid());
                    }
                    Token::Tag(nonempty("@tag:", v)?)
                } else {
                    return Err(invalid());
                }
            }
        };
        Ok(tok)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Name(n) => f.write_str(n),
            Token::AdminVm => f.write_str("@adminvm"),
            Token::AnyVm => f.write_str("@anyvm"),
            Token::Default => f.write_str("@default"),
            Token::Type(t) => write!(f, "@type:{t}"),
            Token::Tag(t) => write!(f, "@tag:{t}"),
            Token::DispVm => f.write_str("@dispvm"),
            Token::DispVmTemplate(t) => write!(f, "@dispvm:{t}"),
            Token::DispVmTag(t) => write!(f, "@dispvm:@tag:{t}"),
        }
    }
}

/// What dom0 knows about one qube, as far as the policy looks (qrexec/utils.py
/// `get_system_info`: type, tags, default_dispvm, template_for_dispvms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domain {
    /// `AppVM`, `AdminVM`, ...
    pub vm_type: String,
    pub tags: Vec<String>,
    pub default_dispvm: Option<String>,
    pub template_for_dispvms: bool,
}

/// The qubes of the system. dom0 is added as `AdminVM` by [`SystemInfo::new`].
#[derive(Debug, Clone, Default)]
pub struct SystemInfo {
    pub domains: BTreeMap<String, Domain>,
}

impl SystemInfo {
    /// App qubes by name, plus dom0.
    pub fn new<'a>(app_qubes: impl IntoIterator<Item = &'a str>) -> SystemInfo {
        let mut domains = BTreeMap::new();
        domains.insert(
            "dom0".to_owned(),
            Domain {
                vm_type: "AdminVM".into(),
                ..Domain::default()
            },
        );
        for q in app_qubes {
            domains.insert(
                q.to_owned(),
                Domain {
                    vm_type: "AppVM".into(),
                    ..Domain::default()
                },
            );
        }
        SystemInfo { domains }
    }

    fn dispvm_template_of(&self, source: &str) -> Option<String> {
        self.domains.get(source)?.default_dispvm.clone()
    }
}

/// The action of a rule with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Allow {
        target: Option<Token>,
        user: Option<String>,
    },
    Deny,
    Ask {
        target: Option<Token>,
        default_target: Option<Token>,
        user: Option<String>,
    },
}

/// One policy line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None` for `*`.
    pub service: Option<String>,
    /// `None` for `*`; otherwise with its leading `+`.
    pub argument: Option<String>,
    pub source: Token,
    pub target: Token,
    pub action: Action,
    pub file: PathBuf,
    pub line: usize,
}

/// The outcome of evaluating a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run the service in `target` (as `user`, or the qube's default user).
    Allow {
        target: String,
        user: Option<String>,
        rule: String,
    },
    /// Refused; `reason` is what dom0 logs.
    Deny { reason: String },
}

/// A loaded policy, or the error that makes it refuse everything.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Result<Vec<Rule>, PolicyError>,
}

fn err(file: &Path, line: usize, message: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

impl Policy {
    /// Loads `dir` (dom0's `/etc/qubes/policy.d`). A broken policy still loads; it then
    /// refuses every call and [`Policy::error`] says why. Only a directory that cannot be
    /// read at all is an `Err`, so a caller can tell "no policy here" apart.
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        if !dir.is_dir() {
            return Err(err(dir, 0, "policy directory does not exist"));
        }
        let mut rules = Vec::new();
        let result = load_dir_into(dir, dir, &mut rules, 0).map(|()| rules);
        Ok(Policy { rules: result })
    }

    /// Parses one file's text (for tests and `check`).
    pub fn parse_text(text: &str, file: &Path) -> Policy {
        let mut rules = Vec::new();
        let base = file.parent().unwrap_or(Path::new("."));
        let result = parse_into(text, file, base, &mut rules, 0).map(|()| rules);
        Policy { rules: result }
    }

    /// The syntax error that makes this policy refuse everything, if any.
    pub fn error(&self) -> Option<&PolicyError> {
        self.rules.as_ref().err()
    }

    pub fn rules(&self) -> &[Rule] {
        match &self.rules {
            Ok(r) => r,
            Err(_) => &[],
        }
    }

    /// Evaluates `service+argument` from `source` to `requested` (a qube name, `@default`,
    /// `@adminvm`/`dom0`, `@dispvm...`; empty means `@default`). `argument` is without `+`.
    pub fn evaluate(
        &self,
        service: &str,
        argument: &str,
        source: &str,
        requested: &str,
        system: &SystemInfo,
    ) -> Decision {
        let deny = |reason: String| Decision::Deny { reason };
        let rules = match &self.rules {
            Ok(r) => r,
            Err(e) => return deny(format!("policy does not load: {e}")),
        };
        let requested = if requested.is_empty() {
            "@default"
        } else {
            requested
        };
        let intended = match Token::parse(requested, Column::Intended) {
            Ok(t) => t,
            Err(e) => return deny(e),
        };
        // Request.__init__: IntendedTarget(target).verify(): a plain name must exist.
        if let Token::Name(n) = &intended {
            if !system.domains.contains_key(n) {
                return deny(format!("invalid target: {n:?}"));
            }
        }
        if let Token::DispVmTemplate(t) = &intended {
            if !system
                .domains
                .get(t)
                .is_some_and(|d| d.template_for_dispvms)
            {
                return deny(format!("not a template for dispvm: {t}"));
            }
        }
        let argument = format!("+{argument}");
        let Some(rule) = rules.iter().find(|r| {
            r.service.as_deref().map_or(true, |s| s == service)
                && r.argument.as_deref().map_or(true, |a| a == argument)
                && matches(&r.source, &Token::Name(source.to_owned()), source, system)
                && matches(&r.target, &intended, source, system)
        }) else {
            return deny("no matching rule found".into());
        };
        let at = format!("{}:{}", rule.file.display(), rule.line);
        match &rule.action {
            Action::Deny => deny(format!("denied by policy {at}")),
            Action::Ask { .. } => deny(format!(
                "policy define 'ask' action at {at}; the stand-in has no user to ask (denied for non-interactive ask)"
            )),
            Action::Allow { target, user } => {
                let actual = target.clone().unwrap_or(intended);
                let name = match actual {
                    Token::Default => {
                        return deny(format!(
                            "policy define 'allow' action at {at} but no target is specified by caller or policy"
                        ))
                    }
                    Token::AdminVm => "dom0".to_owned(),
                    Token::Name(n) => {
                        if !system.domains.contains_key(&n) {
                            return deny(format!("invalid target: {n:?}"));
                        }
                        n
                    }
                    Token::DispVm | Token::DispVmTemplate(_) => {
                        return deny(format!(
                            "policy define 'allow' action to a disposable qube at {at}; the stand-in has no disposables"
                        ))
                    }
                    other => return deny(format!("invalid redirect {other} at {at}")),
                };
                // parser.py AllowResolution.execute (4.2): a qube cannot call itself.
                if name == source {
                    return deny("loopback qrexec connection not supported".into());
                }
                Decision::Allow {
                    target: name,
                    user: user.clone(),
                    rule: at,
                }
            }
        }
    }
}

/// `rule_token.match(other)` of parser.py.
fn matches(rule: &Token, other: &Token, source: &str, system: &SystemInfo) -> bool {
    let other_name = match other {
        Token::Name(n) => Some(n.as_str()),
        _ => None,
    };
    match rule {
        Token::AnyVm => *other != Token::AdminVm,
        Token::Type(t) => other_name
            .and_then(|n| system.domains.get(n))
            .is_some_and(|d| &d.vm_type == t),
        Token::Tag(t) => other_name
            .and_then(|n| system.domains.get(n))
            .is_some_and(|d| d.tags.contains(t)),
        Token::DispVmTemplate(t) => match other {
            Token::DispVm => system.dispvm_template_of(source).as_deref() == Some(t.as_str()),
            _ => rule == other,
        },
        Token::DispVmTag(tag) => {
            let template = match other {
                Token::DispVm => system.dispvm_template_of(source),
                Token::DispVmTemplate(t) => Some(t.clone()),
                _ => None,
            };
            template
                .and_then(|t| system.domains.get(&t).cloned())
                .is_some_and(|d| d.template_for_dispvms && d.tags.contains(tag))
        }
        _ => rule == other,
    }
}

fn load_dir_into(
    dir: &Path,
    base: &Path,
    rules: &mut Vec<Rule>,
    depth: usize,
) -> Result<(), PolicyError> {
    let rd = fs::read_dir(dir).map_err(|e| err(dir, 0, format!("cannot read directory: {e}")))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| err(dir, 0, format!("cannot read directory: {e}")))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only `*.policy` files count; among those, one badly named file refuses
        // everything (parser.py filter_filepaths, POLICYSUFFIX).
        if name.starts_with('.') || !name.ends_with(".policy") || !path.is_file() {
            continue;
        }
        if !name.chars().all(is_filename_char) {
            return Err(err(&path, 0, "invalid filename"));
        }
        files.push((name, path));
    }
    files.sort();
    for (_, path) in files {
        let text =
            fs::read_to_string(&path).map_err(|e| err(&path, 0, format!("failed to load: {e}")))?;
        parse_into(&text, &path, base, rules, depth)?;
    }
    Ok(())
}

fn parse_into(
    text: &str,
    file: &Path,
    base: &Path,
    rules: &mut Vec<Rule>,
    depth: usize,
) -> Result<(), PolicyError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(err(file, 0, "too deeply nested !include"));
    }
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with('!') {
            let params = &fields[1..];
            let one = || {
                if params.len() == 1 {
                    Ok(base.join(params[0]))
                } else {
                    Err(err(file, lineno, "invalid number of params"))
                }
            };
            match fields[0] {
                "!include" => {
                    let p = one()?;
                    if !p.is_file() {
                        return Err(err(file, lineno, format!("not a file: {}", p.display())));
                    }
                    let t = fs::read_to_string(&p)
                        .map_err(|e| err(&p, 0, format!("failed to load: {e}")))?;
                    parse_into(&t, &p, base, rules, depth + 1)?;
                }
                "!include-dir" => {
                    let p = one()?;
                    if !p.is_dir() {
                        return Err(err(
                            file,
                            lineno,
                            format!("not a directory: {}", p.display()),
                        ));
                    }
                    load_dir_into(&p, base, rules, depth + 1)?;
                }
                "!include-service" => {
                    return Err(err(
                        file,
                        lineno,
                        "!include-service (old-format files) is not supported by the stand-in",
                    ))
                }
                _ => return Err(err(file, lineno, "invalid directive")),
            }
            continue;
        }
        rules.push(parse_rule(&fields, file, lineno)?);
    }
    Ok(())
}

fn parse_rule(fields: &[&str], file: &Path, lineno: usize) -> Result<Rule, PolicyError> {
    let e = |m: String| err(file, lineno, m);
    if fields.len() < 5 {
        return Err(e("wrong number of fields".into()));
    }
    // validate_service_and_argument()
    let service = (fields[0] != "*").then(|| fields[0].to_owned());
    if let Some(s) = &service {
        let bad: Vec<char> = s
            .chars()
            .filter(|c| !is_rpcname_char(*c) || *c == '+')
            .collect();
        if !bad.is_empty() {
            return Err(e(format!(
                "service {s:?} contains invalid characters: {bad:?}"
            )));
        }
    }
    let argument = (fields[1] != "*").then(|| fields[1].to_owned());
    if let Some(a) = &argument {
        let bad: Vec<char> = a.chars().filter(|c| !is_rpcname_char(*c)).collect();
        if !bad.is_empty() {
            return Err(e(format!(
                "argument {a:?} contains invalid characters: {bad:?}"
            )));
        }
        if !a.starts_with('+') {
            return Err(e(format!("argument {a:?} does not start with +")));
        }
        if service.is_none() {
            return Err(e("only * argument allowed for * service".into()));
        }
    }
    let source = Token::parse(fields[2], Column::Source).map_err(e)?;
    let target = Token::parse(fields[3], Column::Target).map_err(e)?;
    let mut params: BTreeMap<&str, &str> = BTreeMap::new();
    for p in &fields[5..] {
        let Some((k, v)) = p.split_once('=') else {
            return Err(e(format!("invalid action parameter syntax: {p:?}")));
        };
        if params.insert(k, v).is_some() {
            return Err(e(format!("parameter given twice: {k:?}")));
        }
    }
    let allowed_keys: &[&str] = match fields[4] {
        "allow" => &["target", "user", "notify", "autostart"],
        "deny" => &["notify"],
        "ask" => &["target", "default_target", "user", "notify", "autostart"],
        other => return Err(e(format!("invalid action: {other}"))),
    };
    if let Some(k) = params.keys().find(|k| !allowed_keys.contains(k)) {
        return Err(e(format!(
            "invalid parameters for action {}: {k}",
            fields[4]
        )));
    }
    let redirect = |k: &str| -> Result<Option<Token>, PolicyError> {
        params
            .get(k)
            .map(|v| Token::parse(v, Column::Redirect).map_err(e))
            .transpose()
    };
    let action = match fields[4] {
        "allow" => Action::Allow {
            target: redirect("target")?,
            user: params.get("user").map(|s| s.to_string()),
        },
        "deny" => Action::Deny,
        _ => Action::Ask {
            target: redirect("target")?,
            default_target: redirect("default_target")?,
            user: params.get("user").map(|s| s.to_string()),
        },
    };
    if target == Token::Default && matches!(action, Action::Allow { target: None, .. }) {
        return Err(e(
            "allow action for @default rule must specify target= option".into(),
        ));
    }
    Ok(Rule {
        service,
        argument,
        source,
        target,
        action,
        file: file.to_owned(),
        line: lineno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys() -> SystemInfo {
        SystemInfo::new(["storage", "transfer", "my-work", "my-photos"])
    }

    fn eval(p: &Policy, svc: &str, arg: &str, src: &str, tgt: &str) -> Decision {
        p.evaluate(svc, arg, src, tgt, &sys())
    }

    fn allowed_to(d: &Decision) -> Option<&str> {
        match d {
            Decision::Allow { target, .. } => Some(target),
            Decision::Deny { .. } => None,
        }
    }

    const POLICY: &str = "\
# comment
cloudstore.Volume +work my-work @default allow target=storage
cloudstore.Volume +photos my-photos @default allow target=storage
cloudstore.Sync * transfer @default allow target=storage
cloudstore.Sync * transfer storage allow
cloudstore.Volume * @anyvm @anyvm deny
";

    #[test]
    fn first_match_wins_and_arguments_match_exactly() {
        let p = Policy::parse_text(POLICY, Path::new("/p/70-cloudstore.policy"));
        assert!(p.error().is_none(), "{:?}", p.error());
        let d = eval(&p, "cloudstore.Volume", "work", "my-work", "@default");
        assert_eq!(allowed_to(&d), Some("storage"));
        let d = eval(&p, "cloudstore.Volume", "work", "my-photos", "@default");
        match d {
            Decision::Deny { reason } => {
                assert_eq!(reason, "denied by policy /p/70-cloudstore.policy:6")
            }
            other => panic!("{other:?}"),
        }
        // An empty argument is "+", which only `*` matches.
        let d = eval(&p, "cloudstore.Sync", "", "transfer", "@default");
        assert_eq!(allowed_to(&d), Some("storage"));
        let d = eval(&p, "cloudstore.Sync", "work", "transfer", "storage");
        assert_eq!(allowed_to(&d), Some("storage"));
        // The argument of the rule is "+work": "+work2" and "+wor" do not match.
        assert!(allowed_to(&eval(
            &p,
            "cloudstore.Volume",
            "work2",
            "my-work",
            "@default"
        ))
        .is_none());
        assert!(allowed_to(&eval(&p, "cloudstore.Volume", "wor", "my-work", "@default")).is_none());
        // No rule at all.
        assert_eq!(
            eval(&p, "other.Service", "", "my-work", "storage"),
            Decision::Deny {
                reason: "no matching rule found".into()
            }
        );
    }

    #[test]
    fn anyvm_matches_default_but_not_adminvm() {
        let p = Policy::parse_text(
            "a.B * @anyvm @anyvm allow target=storage\na.B * @anyvm @adminvm deny\n",
            Path::new("x.policy"),
        );
        assert_eq!(
            allowed_to(&eval(&p, "a.B", "", "my-work", "@default")),
            Some("storage")
        );
        assert_eq!(
            allowed_to(&eval(&p, "a.B", "", "my-work", "transfer")),
            Some("storage")
        );
        assert!(allowed_to(&eval(&p, "a.B", "", "my-work", "dom0")).is_none());
    }

    #[test]
    fn allow_without_redirect_goes_to_the_requested_qube_which_must_exist() {
        let p = Policy::parse_text("a.B * @anyvm @anyvm allow\n", Path::new("x.policy"));
        assert_eq!(
            allowed_to(&eval(&p, "a.B", "", "my-work", "storage")),
            Some("storage")
        );
        let d = eval(&p, "a.B", "", "my-work", "@default");
        assert!(
            matches!(d, Decision::Deny { reason } if reason.contains("no target is specified"))
        );
        let d = eval(&p, "a.B", "", "my-work", "nonexistent");
        assert!(matches!(d, Decision::Deny { reason } if reason.contains("invalid target")));
        let d = eval(&p, "a.B", "", "storage", "storage");
        assert!(matches!(d, Decision::Deny { reason } if reason.contains("loopback")));
    }

    #[test]
    fn ask_is_refused_without_a_user() {
        let p = Policy::parse_text("a.B * @anyvm storage ask\n", Path::new("x.policy"));
        assert!(allowed_to(&eval(&p, "a.B", "", "my-work", "storage")).is_none());
    }

    #[test]
    fn type_and_tag_sources() {
        let mut s = sys();
        s.domains.get_mut("my-work").unwrap().tags.push("cs".into());
        let p = Policy::parse_text(
            "a.B * @tag:cs storage allow\na.C * @type:AppVM storage allow\n",
            Path::new("x.policy"),
        );
        assert!(matches!(
            p.evaluate("a.B", "", "my-work", "storage", &s),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            p.evaluate("a.B", "", "my-photos", "storage", &s),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            p.evaluate("a.C", "", "my-photos", "storage", &s),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn syntax_errors_refuse_everything_and_name_the_line() {
        let cases = [
            (
                "a.B +x @anyvm storage allow extra",
                "invalid action parameter syntax",
            ),
            ("a.B x @anyvm storage allow", "does not start with +"),
            (
                "* +x @anyvm storage allow",
                "only * argument allowed for * service",
            ),
            ("a+B * @anyvm storage allow", "invalid characters"),
            ("a.B * @anyvm storage permit", "invalid action"),
            ("a.B * @anyvm storage", "wrong number of fields"),
            ("a.B * @default storage allow", "invalid source token"),
            ("a.B * @anyvm @bogus allow", "invalid target token"),
            ("a.B * @anyvm @default allow", "must specify target="),
            (
                "a.B * @anyvm storage allow target=@anyvm",
                "invalid redirect token",
            ),
            ("a.B * @anyvm storage allow user=a user=b", "given twice"),
            ("a.B * @anyvm storage deny target=x", "invalid parameters"),
            ("a.B * @tag: storage allow", "invalid empty"),
            ("!bogus x", "invalid directive"),
            ("!include", "invalid number of params"),
        ];
        for (line, want) in cases {
            let text = format!("ok.Svc * @anyvm @anyvm allow target=storage\n{line}\n");
            let p = Policy::parse_text(&text, Path::new("/p/30-user.policy"));
            let e = p
                .error()
                .unwrap_or_else(|| panic!("{line:?} must be refused"));
            assert_eq!(e.line, 2, "{line:?}");
            assert!(e.message.contains(want), "{line:?}: {e}");
            // Even the valid first line no longer allows anything.
            let d = eval(&p, "ok.Svc", "", "my-work", "@default");
            assert!(matches!(d, Decision::Deny { reason } if reason.contains("30-user.policy:2")));
        }
    }

    #[test]
    fn directory_order_names_and_includes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(
            d.join("70-b.policy"),
            "a.B * @anyvm @anyvm allow target=storage\n",
        )
        .unwrap();
        fs::write(d.join("30-a.policy"), "a.B * my-work @anyvm deny\n").unwrap();
        fs::write(d.join("README"), "not a policy, ignored\n").unwrap();
        fs::write(d.join(".hidden"), "garbage\n").unwrap();
        fs::create_dir(d.join("inc")).unwrap();
        fs::write(
            d.join("inc/x.policy"),
            "c.D * @anyvm @anyvm allow target=transfer\n",
        )
        .unwrap();
        fs::write(d.join("80-inc.policy"), "!include-dir inc\n").unwrap();
        let p = Policy::load_dir(d).unwrap();
        assert!(p.error().is_none(), "{:?}", p.error());
        assert!(allowed_to(&p.evaluate("a.B", "", "my-work", "@default", &sys())).is_none());
        assert_eq!(
            allowed_to(&p.evaluate("a.B", "", "my-photos", "@default", &sys())),
            Some("storage")
        );
        assert_eq!(
            allowed_to(&p.evaluate("c.D", "", "my-photos", "@default", &sys())),
            Some("transfer")
        );
        fs::write(d.join("90-Bad.policy"), "").unwrap();
        let p = Policy::load_dir(d).unwrap();
        assert!(p.error().unwrap().message.contains("invalid filename"));
        assert!(allowed_to(&p.evaluate("a.B", "", "my-photos", "@default", &sys())).is_none());
    }

    #[test]
    fn include_cycles_end() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.policy"), "!include a.policy\n").unwrap();
        let p = Policy::load_dir(dir.path()).unwrap();
        assert!(p.error().unwrap().message.contains("too deeply nested"));
    }
}
