# Runs a Google Benchmark program briefly and fails if any benchmark reports an error.
#
#   cmake -DPROGRAM=<binary> [-DARGS=<more arguments>] -P check_no_errors.cmake
#
# A benchmark that calls SkipWithError() prints "ERROR OCCURRED" but leaves the exit
# status 0, so a harness whose setup no longer holds would go unnoticed. The JSON report
# marks such a run with "error_occurred"; every run is checked for it, and a report with
# no runs at all (a filter that matches nothing) fails too.
cmake_minimum_required(VERSION 3.25)

if(NOT PROGRAM)
  message(FATAL_ERROR "check_no_errors: -DPROGRAM=<benchmark binary> is required")
endif()

# Iterations are few: the figures mean nothing here, only that each benchmark gets past
# its warm-up and its consistency checks.
execute_process(COMMAND "${PROGRAM}" --benchmark_format=json --benchmark_min_time=0.01 ${ARGS}
                OUTPUT_VARIABLE report ERROR_VARIABLE diagnostics RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} exited with ${status}\n${diagnostics}")
endif()

string(JSON runs ERROR_VARIABLE jsonError LENGTH "${report}" benchmarks)
if(jsonError)
  message(FATAL_ERROR "no JSON benchmark report from ${PROGRAM}: ${jsonError}\n${report}\n${diagnostics}")
endif()
if(runs EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} ran no benchmark")
endif()

set(failures "")
math(EXPR last "${runs} - 1")
foreach(i RANGE ${last})
  string(JSON name GET "${report}" benchmarks ${i} name)
  # Only runs with an error carry the field.
  string(JSON failed ERROR_VARIABLE absent GET "${report}" benchmarks ${i} error_occurred)
  if(NOT absent AND failed)
    string(JSON error GET "${report}" benchmarks ${i} error_message)
    string(APPEND failures "\n  ${name}: ${error}")
  else()
    message(STATUS "ok: ${name}")
  endif()
endforeach()
if(failures)
  message(FATAL_ERROR "benchmarks reported errors:${failures}")
endif()
message(STATUS "${runs} benchmark runs, no errors")
