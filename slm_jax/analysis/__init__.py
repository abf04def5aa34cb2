"""Where training went, token by token (Rho-1 §2.1 and Figure 2).

token_categories  H→H / L→H / H→L / L→L from per-token losses over checkpoints (numpy)
excess_html       one self-contained HTML page of tokens coloured by excess loss
job               the `analyze` job: scores a run's checkpoints and writes both
"""
