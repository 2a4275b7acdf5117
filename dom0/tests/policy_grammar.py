"""Test helper: checks a policy file against the rules of
QubesOS/qubes-core-qrexec qrexec/policy/parser.py and evaluates calls with its
first-match semantics, for the tokens cloudstore's policy uses.

Followed from parser.py: Rule.from_line (whitespace split, at least five
fields), validate_service_and_argument (service chars, argument starts with
'+', '*' service only with '*' argument), VMToken (literal names, '@' tokens
per column), Action / Allow / Deny parameters (deny takes no target=), the
"allow action for @default rule must specify target=" check, AnyVM.match
(every qube but dom0), AdminVM.match (dom0 only); comments and empty lines as
in doc/multifile-policy.markdown."""

import string

RPCNAME_ALLOWED_CHARSET = frozenset(string.ascii_letters + string.digits + "+-._")
SOURCE_TOKENS = {"@anyvm", "@adminvm"}
TARGET_TOKENS = {"@anyvm", "@adminvm", "@default", "@dispvm"}


class PolicySyntaxError(ValueError):
    pass


def parse(text):
    """Rules as dicts, in file order; PolicySyntaxError(lineno, why)."""
    rules = []
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("!"):
            raise PolicySyntaxError(f"line {lineno}: directives not expected here")
        fields = stripped.split()
        if len(fields) < 5:
            raise PolicySyntaxError(f"line {lineno}: wrong number of fields")
        service, argument, source, target, action, *params = fields
        if service != "*" and not set(service) <= RPCNAME_ALLOWED_CHARSET - {"+"}:
            raise PolicySyntaxError(f"line {lineno}: service {service!r} has invalid characters")
        if argument != "*":
            if not set(argument) <= RPCNAME_ALLOWED_CHARSET or not argument.startswith("+"):
                raise PolicySyntaxError(f"line {lineno}: invalid argument {argument!r}")
            if service == "*":
                raise PolicySyntaxError(f"line {lineno}: only * argument allowed for * service")
        for token, allowed in ((source, SOURCE_TOKENS), (target, TARGET_TOKENS)):
            if token.startswith("@") and token not in allowed and not token.startswith(("@tag:", "@type:")):
                raise PolicySyntaxError(f"line {lineno}: invalid token {token!r}")
        if action not in ("allow", "deny", "ask"):
            raise PolicySyntaxError(f"line {lineno}: invalid action {action!r}")
        kwds = {}
        for param in params:
            if "=" not in param:
                raise PolicySyntaxError(f"line {lineno}: invalid action parameter syntax {param!r}")
            key, value = param.split("=", 1)
            if key in kwds:
                raise PolicySyntaxError(f"line {lineno}: parameter given twice: {key!r}")
            kwds[key] = value
        allowed_params = {"deny": {"notify"}, "allow": {"target", "user", "notify", "autostart"}}
        if action in allowed_params and not set(kwds) <= allowed_params[action]:
            raise PolicySyntaxError(f"line {lineno}: invalid parameters for action {action}")
        if target == "@default" and action == "allow" and "target" not in kwds:
            raise PolicySyntaxError(
                f"line {lineno}: allow action for @default rule must specify target= option"
            )
        rules.append(
            dict(
                lineno=lineno,
                service=service,
                argument=argument,
                source=source,
                target=target,
                action=action,
                params=kwds,
            )
        )
    return rules


def _is_dom0(name):
    return name in ("@adminvm", "dom0")


def _match(token, name):
    if token == "@anyvm":
        return not _is_dom0(name)
    if token == "@adminvm":
        return _is_dom0(name)
    return token == name


def evaluate(rules, service, argument, source, target):
    """``(action, redirected target, rule)`` of the first matching rule, or
    ``("deny", None, None)`` when none matches (qrexec denies then)."""
    for rule in rules:
        if rule["service"] not in ("*", service):
            continue
        if rule["argument"] not in ("*", "+" + argument):
            continue
        if not _match(rule["source"], source) or not _match(rule["target"], target):
            continue
        if rule["action"] == "allow":
            return "allow", rule["params"].get("target", target), rule
        return rule["action"], None, rule
    return "deny", None, None
