# The arithmetic of bench/compare.sh's table, sourced by it (and by its test,
# Bench.CompareRatios).

# median x...: the middle value (the lower middle of an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# geomean r...: "G (95 % interval L-H)" of the positive ratios among its arguments (two
# standard errors of the mean log ratio), "G (one round)", or n/a; spaces are written as
# "_" so that the result is one word for `read`.
geomean() {
  printf '%s\n' "$@" | awk '$1 ~ /^[0-9]*\.?[0-9]+$/ && $1 + 0 > 0 { l = log($1); s += l; q += l * l; n++ }
    END {
      if (n == 0) { print "n/a"; exit }
      m = s / n
      if (n == 1) { printf "%.3f_(one_round)", exp(m); exit }
      v = (q - n * m * m) / (n - 1); if (v < 0) v = 0
      e = 2 * sqrt(v / n)
      printf "%.3f_(95_%%_interval_%.3f-%.3f)", exp(m), exp(m - e), exp(m + e)
    }'
}

# ratio a b: a / b to two places, or n/a when either is n/a or b is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "n/a" || a == "n/a" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }
