"""The demo's oracle: the VADER sentiment analyzer (vaderSentiment, Hutto & Gilbert 2014), a rule-based model that no
one here wrote. The reward of a response is VADER's compound score of its text, in [-1, 1] (the prompt is ignored).
Use it as `--reward-fn benchmarks/vader_reward.py:vader`."""
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

ANALYZER = SentimentIntensityAnalyzer()


def vader(prompts: list, responses: list[str]) -> list[float]:
    return [ANALYZER.polarity_scores(r)["compound"] for r in responses]
