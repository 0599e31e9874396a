"""Content policy for shared servers (opt-in): a prompt filter and an NSFW check on outputs.

Both are off unless configured, and apply only to the key tiers named by
--content-policy-tiers (all tiers by default), so an operator can filter anonymous or
low-tier callers while trusted keys are served as before.

- Prompt filter (--prompt-filter FILE): one rule a line; `#` starts a comment; a plain line
  is a word or phrase matched case-insensitively on word boundaries, `re:PATTERN` a regular
  expression (case-insensitive). The file is re-read when it changes (checked on use), so
  rules can be edited without a restart; a file that no longer parses keeps the last good
  rules and logs why. A matching prompt is refused with a 400 that names the rule (line and
  text), and the refusal is audited. Only positive prompts are filtered: negative prompts
  name what is *not* wanted.
- NSFW check (--nsfw-check-dir DIR): every output image of a generation is classified by the
  CompVis safety checker (postprocess.nsfw); flagged images are blurred or replaced by a black
  image (--nsfw-action) and marked in `info` under "content_policy". Checked responses are
  neither cached nor answered from the cache, so a tier the check applies to never receives
  an unchecked image.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ApiError
from ..scheduler import PRIORITY_HIGH, PRIORITY_NORMAL

log = logging.getLogger(__name__)

TIER_NAMES = ("high", "normal", "low")
NSFW_ACTIONS = ("blur", "replace")
BLUR_FRACTION = 0.06  # Gaussian radius as a share of the longer side: nothing recognisable survives


class ContentPolicyViolation(ApiError):
    """A prompt matched a rule of the prompt filter (400, naming the rule)."""

    status_code = 400
    error_name = "ContentPolicyViolation"


@dataclass(frozen=True)
class ContentPolicyConfig:
    """The flags; everything off by default."""

    prompt_filter: Path | None = None  # --prompt-filter
    nsfw_model_dir: Path | None = None  # --nsfw-check-dir
    nsfw_action: str = "blur"  # --nsfw-action: blur | replace
    tiers: frozenset[str] = frozenset(TIER_NAMES)  # --content-policy-tiers

    def __post_init__(self) -> None:
        if self.nsfw_action not in NSFW_ACTIONS:
            raise ValueError(f"--nsfw-action must be one of {', '.join(NSFW_ACTIONS)}; received {self.nsfw_action!r}")
        unknown = set(self.tiers) - set(TIER_NAMES)
        if unknown:
            raise ValueError(f"--content-policy-tiers: unknown tiers {sorted(unknown)}; known: {', '.join(TIER_NAMES)}")


@dataclass(frozen=True)
class PromptRule:
    line: int
    text: str
    pattern: re.Pattern[str]

    def describe(self) -> str:
        return f"rule {self.line} ({self.text!r})"


def parse_rules(text: str) -> list[PromptRule]:
    """The rules of a filter file; a bad regular expression is a ValueError naming its line."""
    rules = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("re:"):
            source = line[3:].strip()
        else:
            source = r"(?<!\w)" + r"\s+".join(re.escape(word) for word in line.split()) + r"(?!\w)"
        try:
            rules.append(PromptRule(number, line, re.compile(source, re.IGNORECASE)))
        except re.error as exc:
            raise ValueError(f"prompt filter line {number} ({line!r}): {exc}") from exc
    return rules


class PromptFilter:
    """The rules of one file, re-read when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._rules: list[PromptRule] = []
        self.reload()  # a missing or broken file at start is a startup error, not a silent pass

    def reload(self) -> None:
        stat = self.path.stat()
        rules = parse_rules(self.path.read_text(encoding="utf-8"))
        with self._lock:
            self._rules, self._stamp = rules, (stat.st_mtime, stat.st_size)

    def rules(self) -> list[PromptRule]:
        try:
            stat = self.path.stat()
            if (stat.st_mtime, stat.st_size) != self._stamp:
                self.reload()
                log.info("prompt filter %s reloaded: %d rules", self.path, len(self._rules))
        except (OSError, ValueError) as exc:  # keep serving with the last good rules
            log.error("prompt filter %s not reloaded, keeping %d rules: %s", self.path, len(self._rules), exc)
        with self._lock:
            return list(self._rules)

    def first_match(self, texts: Iterable[str]) -> PromptRule | None:
        rules = self.rules()
        for text in texts:
            for rule in rules:
                if rule.pattern.search(text):
                    return rule
        return None


def tier_of(priority: int) -> str:
    """The key tier name of a scheduler priority (lower runs first)."""
    if priority <= PRIORITY_HIGH:
        return "high"
    return "normal" if priority <= PRIORITY_NORMAL else "low"


def request_prompts(request: Any) -> list[str]:
    """The positive prompts of a txt2img/img2img request (a list prompt gives each entry)."""
    texts: list[str] = []
    for name in ("prompt", "hr_prompt"):
        value = getattr(request, name, None)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, (list, tuple)):
            texts.extend(part for part in value if isinstance(part, str))
    return texts


@dataclass
class ContentPolicy:
    """What the serving hooks ask: may this prompt run, and what may this caller see."""

    config: ContentPolicyConfig = field(default_factory=ContentPolicyConfig)
    prompt_filter: PromptFilter | None = None
    classifier: Any = None  # postprocess.nsfw.SafetyClassifier, loaded on first use

    @classmethod
    def from_config(cls, config: ContentPolicyConfig, device: str = "cpu") -> ContentPolicy:
        prompt_filter = PromptFilter(config.prompt_filter) if config.prompt_filter else None
        classifier = None
        if config.nsfw_model_dir:
            from ..postprocess.nsfw import SafetyClassifier

            classifier = SafetyClassifier(Path(config.nsfw_model_dir), device)
        return cls(config, prompt_filter, classifier)

    def applies_to(self, priority: int) -> bool:
        return tier_of(priority) in self.config.tiers

    def violation(self, prompts: Iterable[str], priority: int) -> ContentPolicyViolation | None:
        """The refusal for the first prompt that matches a rule, or None."""
        if self.prompt_filter is None or not self.applies_to(priority):
            return None
        rule = self.prompt_filter.first_match(prompts)
        if rule is None:
            return None
        return ContentPolicyViolation(f"the prompt is refused by the content policy: {rule.describe()}",
                                      errors=f"prompt filter {self.prompt_filter.path.name} {rule.describe()}")

    def checks_images(self, priority: int) -> bool:
        return self.classifier is not None and self.applies_to(priority)

    def filter_response(self, response: dict[str, Any]) -> dict[str, Any]:
        """Classify the response's images; blur/replace the flagged ones and mark them in info."""
        encoded = list(response.get("images") or [])
        if not encoded:
            return response
        from ..postprocess.encode import decode_image_base64

        images = [decode_image_base64(text) for text in encoded]
        flagged = self.classifier.flags(images)
        images_out = [_hide(image, self.config.nsfw_action) if bad else text
                      for image, text, bad in zip(images, encoded, flagged, strict=False)]
        return {**response, "images": images_out, "info": _marked_info(response.get("info"), flagged,
                                                                          self.config.nsfw_action)}


def _hide(image: Any, action: str) -> str:
    """The flagged image blurred (or black), encoded in its own format with its own infotext."""
    from PIL import Image, ImageFilter

    from ..postprocess.encode import encode_image_base64

    fmt = (image.format or "PNG").lower()
    infotext = image.info.get("parameters") if isinstance(image.info.get("parameters"), str) else None
    if action == "replace":
        hidden = Image.new("RGB", image.size)
    else:
        radius = max(4.0, BLUR_FRACTION * max(image.size))
        hidden = image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))
    return encode_image_base64(hidden, fmt if fmt in ("png", "jpeg", "webp") else "png", infotext=infotext)


def _marked_info(info: Any, flagged: list[bool], action: str) -> Any:
    """info JSON (a string, as A1111 sends it) with "content_policy": {nsfw: [...], action}."""
    mark = {"nsfw": flagged, "action": action if any(flagged) else None}
    if isinstance(info, str):
        try:
            data = json.loads(info)
        except ValueError:
            return info
        if isinstance(data, dict):
            return json.dumps({**data, "content_policy": mark})
    return info
