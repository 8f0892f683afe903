package io.rasputin;

/** No server could be reached in time: the cluster is down or the addresses are wrong. Nothing took effect. */
public class ClusterUnavailableException extends RasputinException {
    public ClusterUnavailableException(String message, int code, int serverCode) {
        super(message, code, serverCode);
    }
}
