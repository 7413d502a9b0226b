# The minilog agent image: a drop-in for grafana/alloy in a compose stack.
# `command: [run, --server.http.listen-addr=0.0.0.0:12345, /etc/alloy/config.alloy]` works unchanged.
FROM python:3.11-slim
WORKDIR /opt/minilog
COPY pyproject.toml README.md ./
COPY minilog ./minilog
RUN pip install --no-cache-dir . && mkdir -p /var/lib/minilog
WORKDIR /var/lib/minilog
EXPOSE 12345
ENTRYPOINT ["minilog"]
CMD ["run", "--server.http.listen-addr=0.0.0.0:12345", "--storage.path=/var/lib/minilog", "/etc/alloy/config.alloy"]
