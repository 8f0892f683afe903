package io.rasputin;

/** The client was closed; create a new one. */
public class ClientClosedException extends RasputinException {
    public ClientClosedException(String message, int code, int serverCode) {
        super(message, code, serverCode);
    }
}
