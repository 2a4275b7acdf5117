"""Stand-in for qubes-core-admin qubes/features.py: a dict whose changes fire
``domain-feature-pre-set:NAME`` / ``domain-feature-set:NAME`` (with ``oldvalue``
only when there was one) and ``domain-feature-pre-delete:NAME`` /
``domain-feature-delete:NAME`` on the owning qube; values are coerced to str,
booleans to "1"/""."""


class Features(dict):
    def __init__(self, subject, other=None, **kwargs):
        super().__init__()
        self.subject = subject
        self.update(other, **kwargs)

    def __delitem__(self, key):
        self.subject.fire_event("domain-feature-pre-delete:" + key, feature=key)
        super().__delitem__(key)
        self.subject.fire_event("domain-feature-delete:" + key, feature=key)

    def __setitem__(self, key, value):
        if value is None or isinstance(value, bool):
            value = "1" if value else ""
        else:
            value = str(value)
        try:
            oldvalue = self[key]
            has_oldvalue = True
        except KeyError:
            has_oldvalue = False
        if has_oldvalue:
            self.subject.fire_event(
                "domain-feature-pre-set:" + key,
                pre_event=True,
                feature=key,
                value=value,
                oldvalue=oldvalue,
            )
        else:
            self.subject.fire_event(
                "domain-feature-pre-set:" + key, pre_event=True, feature=key, value=value
            )
        super().__setitem__(key, value)
        if has_oldvalue:
            self.subject.fire_event(
                "domain-feature-set:" + key, feature=key, value=value, oldvalue=oldvalue
            )
        else:
            self.subject.fire_event("domain-feature-set:" + key, feature=key, value=value)

    def clear(self):
        for key in tuple(self):
            del self[key]

    def update(self, *args, **kwargs):
        if args and args[0] is not None:
            other = args[0]
            for key in other.keys() if hasattr(other, "keys") else ():
                self[key] = other[key]
        for key, value in kwargs.items():
            self[key] = value

    def pop(self, _key, _default=None):
        raise NotImplementedError()

    def popitem(self):
        raise NotImplementedError()

    def setdefault(self, _key, _default=None):
        raise NotImplementedError()
