"""The real-model judge: the AFINN word list (Finn Årup Nielsen 2011, "A new ANEW: evaluation of a word list for
sentiment analysis in microblogs"; the `afinn` package, AFINN-en-165, 3,382 English words and phrases that he rated by
hand from −5 to +5), a lexicon that no one here wrote and that shares no code with the oracle VADER: it sums the
valences of the listed words it finds, with no rules for negation, intensifiers, punctuation or capitals (VADER has
all four), so the two disagree where those rules matter ("not bad", "GREAT!!!").

AFINN's own score is that sum, which grows with the length of the response (the same sentence twice scores twice).
The reward here is the sum per word: sum of valences / the number of words, the words being AFINN's own `\\w+` tokens
(an empty response scores 0). It is the mean valence of a word of the response, on AFINN's scale, within [−5, 5]
(every listed entry spans at least one word and is worth at most 5); answers to these prompts score about 0.05. The
same text repeated scores the same, and neutral filler dilutes it. The prompt is ignored.
Use it as `--eval-reward-fn benchmarks/afinn_reward.py:afinn`."""
from afinn import Afinn

ANALYZER = Afinn(language="en")  # AFINN-en-165, shipped inside the package: nothing is downloaded


def afinn(prompts: list, responses: list[str]) -> list[float]:
    return [ANALYZER.score(r) / max(1, len(ANALYZER.split(r))) for r in responses]
