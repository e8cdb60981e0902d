"""How mixtures are proposed and judged: the searcher behind the FSD gate, the strategies that
propose (Optuna, exhaustive, greedy, local mutations), the objectives, and the one rule that
says what became of a trial."""
