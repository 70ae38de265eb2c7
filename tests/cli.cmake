# The command line (src/main.c, src/cmd/): every command's --help, the command
# list, `kvstream methods`, and option errors.  All carry the label "cli":
#   ctest -L cli --output-on-failure
#
# kv_cli_test(name status expect lines args...) runs `kvstream args...` on 2
# ranks and passes when the exit status is `status`, every '|'-separated
# fixed string of `expect` is in the output, and (when `lines` is not empty)
# exactly one output line matches the grep regex `lines` (rank 0 alone
# prints help and errors).
set(KV_CLI_SH [=[
out=$("$0" "$@" 2>&1); rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne "$KV_STATUS" ]; then echo "cli: exit status $rc, expected $KV_STATUS"; exit 1; fi
IFS='|'
for p in $KV_EXPECT; do
  if ! printf '%s\n' "$out" | grep -qF -- "$p"; then echo "cli: missing in output: $p"; exit 1; fi
done
if [ -n "$KV_LINES" ]; then
  n=$(printf '%s\n' "$out" | grep -c -- "$KV_LINES")
  if [ "$n" -ne 1 ]; then echo "cli: $n lines match '$KV_LINES', expected 1"; exit 1; fi
fi
exit 0
]=])

function(kv_cli_test name status expect lines)
  add_test(NAME ${name} COMMAND sh -c "${KV_CLI_SH}"
           ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 ${MPIEXEC_PREFLAGS} ${KVSTREAM_EXE} ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "cli" TIMEOUT 120
                       ENVIRONMENT "${KV_MPI_ENV};KV_STATUS=${status};KV_EXPECT=${expect};KV_LINES=${lines}")
endfunction()

# CMD --help: exit 0, the usage line once, every option of the command
set(KV_GEN_OPTS "--kind|--streams|--queries|--clusters|--spread|--value-noise|--beta|--radius|--seed")
kv_cli_test(cli_help_gen 0 "usage: kvstream gen|-o, --output FILE|--tokens|--dim|--dv|--every-position|--chunk|${KV_GEN_OPTS}|--help"
            "^usage: kvstream" gen --help)
kv_cli_test(cli_help_info 0 "usage: kvstream info FILE|--help" "^usage: kvstream" info --help)
kv_cli_test(cli_help_replay 0
            "usage: kvstream replay|--methods LIST|-o, --output FILE|--save-outputs|--batch B|(default: 64)|--seed|--semantics full|window-unmasked-values|--window|--shard-chunk|--no-bound-ratio|-q, --quiet|--max-memory SIZE|--checkpoint FILE|--checkpoint-every|--resume FILE|--stop-after N|exit status 3"
            "^usage: kvstream" replay --help)
kv_cli_test(cli_help_sweep 0 "usage: kvstream sweep|-o, --output|--n N|--d D|--methods|--eps|--workdir|--keep-traces|${KV_GEN_OPTS}|(default: jl)"
            "^usage: kvstream" sweep --help)
kv_cli_test(cli_help_record 0 "usage: kvstream record|--model FILE|--tokens N|--prompt-tokens|--temperature|--seed|--chunk|-o, --output FILE"
            "^usage: kvstream" record -h)
kv_cli_test(cli_help_methods 0 "usage: kvstream methods|--help" "^usage: kvstream" methods --help)
kv_cli_test(cli_help_version 0 "usage: kvstream version" "^usage: kvstream" version --help)
# --help wins over anything else on the line, and `help CMD` is `CMD --help`
kv_cli_test(cli_help_first 0 "usage: kvstream replay|--stop-after" "^usage: kvstream" replay --batch 0 --help)
kv_cli_test(cli_help_cmd 0 "usage: kvstream sweep|--eps" "^usage: kvstream" help sweep)

# the command list (jobs/kvjob.sh greps it for --checkpoint; test_analysis.py for "  sweep ")
kv_cli_test(cli_help_list 0 "  gen |  info |  replay |  sweep |  record |  methods |  version |--checkpoint"
            "^usage: kvstream" help)

# kvstream methods: the kinds' headings (the methods themselves: cli_methods_specs)
kv_cli_test(cli_methods 0 "Methods (--methods NAME|exact: exact attention|eviction: |memory: " "" methods)
# kvstream methods --specs: a header, then one well-formed line per method
# (7 fields, the spec starting with the name), each method also described
# by `kvstream methods`; none listed here, they come from the registry
add_test(NAME cli_methods_specs COMMAND sh -c [=[
specs=$("$0" methods --specs) && all=$("$0" methods) || exit 1
printf '%s
' "$specs"
[ "$(printf '%s
' "$specs" | head -n 1)" = "# name kind spec pinv semantics budget seeded" ] || { echo "bad header"; exit 1; }
n=0
for name in $(printf '%s
' "$specs" | awk '!/^#/ && NF == 7 && index($3, $1) == 1 && $4 ~ /^pinv=(yes|no)$/ { print $1 }'); do
  printf '%s
' "$all" | grep -qF -- "  $name " || { echo "$name: not in kvstream methods"; exit 1; }
  n=$((n + 1))
done
lines=$(printf '%s
' "$specs" | grep -vc '^#')
[ "$n" -ge 1 ] && [ "$n" -eq "$lines" ] || { echo "$n of $lines lines well formed"; exit 1; }
echo "cli_methods_specs: $n methods"
]=] ${KVSTREAM_EXE})
set_tests_properties(cli_methods_specs PROPERTIES LABELS "cli" TIMEOUT 120 ENVIRONMENT "${KV_MPI_ENV}")

# errors: exit 2, one line from rank 0 naming the problem
kv_cli_test(cli_bad_batch 2 "kvstream: error: replay: --batch: 0 is out of range [1, 1048576]" "^kvstream"
            replay --batch 0 x.h5)
kv_cli_test(cli_bad_stop_after 2 "replay: --stop-after: 'soon' is not an integer" "^kvstream"
            replay x.h5 --stop-after soon)
kv_cli_test(cli_bad_list 2 "sweep: --n: 'x' is not an integer" "^kvstream" sweep --n 16,x)
kv_cli_test(cli_unknown_command 2 "kvstream: error: unknown command 'nosuchcmd'" "^kvstream" nosuchcmd)
kv_cli_test(cli_no_command 2 "usage: kvstream <command>|  replay |  pareto |kvstream: error: no command given" "^kvstream")
# no command: the usage on stderr only (stdout empty), exit status 2; `help`: on stdout, status 0
add_test(NAME cli_no_command_stderr COMMAND sh -c [=[
out=$("$0" 2>/dev/null); rc=$?
err=$("$0" 2>&1 >/dev/null)
printf 'stdout: [%s]\nstderr:\n%s\n' "$out" "$err"
[ "$rc" -eq 2 ] || { echo "exit status $rc, expected 2"; exit 1; }
[ -z "$out" ] || { echo "usage on stdout, expected stderr only"; exit 1; }
printf '%s\n' "$err" | grep -q '^usage: kvstream <command>' || { echo "no usage line on stderr"; exit 1; }
printf '%s\n' "$err" | grep -q '^  replay ' || { echo "no command list on stderr"; exit 1; }
help=$("$0" help 2>/dev/null) || { echo "help: non-zero exit"; exit 1; }
printf '%s\n' "$help" | grep -q '^usage: kvstream <command>' || { echo "help: no usage on stdout"; exit 1; }
echo "cli_no_command_stderr: ok"
]=] ${KVSTREAM_EXE})
set_tests_properties(cli_no_command_stderr PROPERTIES LABELS "cli" TIMEOUT 120 ENVIRONMENT "${KV_MPI_ENV}")
