"""Deployer safeguards: a policy guard ("bring your own policy", as gpt-oss-safeguard is used) that checks
user input, answers, tool output and reasoning against policies written by the deployer.

- :mod:`policy`: policy files (Markdown, optional front matter: action, categories), versioned by hash.
- :mod:`verdict`: the guard prompt, the verdict's JSON Schema and its turn grammar, and parsing.
- :mod:`backends`: a guard model run by gptoss itself, or any OpenAI-compatible endpoint.
- :mod:`audit`: every decision in SQLite.
- :mod:`guard`: :class:`Guard` runs all policies on a piece of content and decides: allow, flag or block.
- :mod:`stream`: :class:`OutputGate` releases a streamed answer only in checked pieces (or at the end).

This layer sits beside conversation/: it uses engine/ and harmony/ and knows nothing of HTTP.
"""

from gptoss.guard.guard import Decision, Guard, GuardSettings
from gptoss.guard.policy import Policy, load_policy
from gptoss.guard.verdict import Verdict, VerdictError, parse_verdict

__all__ = ["Decision", "Guard", "GuardSettings", "Policy", "load_policy", "Verdict", "VerdictError", "parse_verdict"]
