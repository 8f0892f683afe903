package io.rasputin;

/** An argument was malformed, for example an unparsable peer address. */
public class InvalidArgumentException extends RasputinException {
    public InvalidArgumentException(String message, int code, int serverCode) {
        super(message, code, serverCode);
    }
}
