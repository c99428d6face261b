#!/usr/bin/env bash
# Entrypoint of the pipeline image. Spark on Kubernetes (spark-submit / Spark Operator) starts its pods with the
# first argument `driver` or `executor` and passes the rest through SPARK_* environment variables; this follows
# the contract of Apache Spark's own resource-managers/kubernetes/docker/.../entrypoint.sh. Anything else
# (KFP steps, `mlflow server`, `ncfctl ...`) runs unchanged.
set -euo pipefail

spark_classpath() {
  local classpath="${SPARK_HOME}/jars/*"
  if [ -n "${SPARK_EXTRA_CLASSPATH:-}" ]; then classpath="${classpath}:${SPARK_EXTRA_CLASSPATH}"; fi
  if [ -n "${SPARK_CLASSPATH:-}" ]; then classpath="${SPARK_CLASSPATH}:${classpath}"; fi
  printf '%s' "${classpath}"
}

case "${1:-}" in
  driver)
    shift
    cmd=(
      "${SPARK_HOME}/bin/spark-submit"
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}"
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}"
      --deploy-mode client
      "$@"
    )
    ;;
  executor)
    shift
    # Spark passes executor JVM options as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... in order.
    java_opts=()
    while IFS= read -r opt; do java_opts+=("${opt}"); done < <(
      env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/^[^=]*=//' || true)
    cmd=(
      "${JAVA_HOME}/bin/java"
      "${java_opts[@]}"
      "-Xms${SPARK_EXECUTOR_MEMORY}"
      "-Xmx${SPARK_EXECUTOR_MEMORY}"
      -cp "$(spark_classpath)"
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
      --driver-url "${SPARK_DRIVER_URL}"
      --executor-id "${SPARK_EXECUTOR_ID}"
      --cores "${SPARK_EXECUTOR_CORES}"
      --app-id "${SPARK_APPLICATION_ID}"
      --hostname "${SPARK_EXECUTOR_POD_IP}"
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}"
      --podName "${SPARK_EXECUTOR_POD_NAME}"
    )
    ;;
  *)
    cmd=("$@")
    ;;
esac

# tini (installed in the pipeline image) reaps zombies (Spark and torch start child processes) and forwards signals.
if [ -x /usr/bin/tini ]; then exec /usr/bin/tini -s -- "${cmd[@]}"; fi
exec "${cmd[@]}"
