namespace RepLKNet.Tests.Segmentation;

/// <summary>
/// PNG masks written by PIL 9.4 (an encoder we did not write) with the index values PIL reads back
/// (<c>np.array(Image.open(f))</c>): an optimized 8-bit palette image ('P'), a 4-bit palette image, and a greyscale ('L')
/// image whose rows PIL filtered (Sub/Up/… filters, so every unfiltering path is exercised).
/// </summary>
internal static class PilMasks
{
    public static readonly (string Base64, int Height, int Width, byte[] Values) Palette8 = (
        "iVBORw0KGgoAAAANSUhEUgAAAAcAAAAFCAMAAAC+RAbqAAADAFBMVEUSdL+luLjHpf2uIXEBVXV3yut85GPbkP9QoJDyEku3YN+NpZ4wvSE08fzyApwkWuissDvKtvDkW/EVcThoJx2gsAkh7/e82DcL1Ipw0ExELCz7E5B44qeywSOt8jQBEr8C1+OUPtEW3OuHueGrIPxcPJAbNWsIFAiYzkwTZIkasjyF1Pdf6WpRCSCN/ixHXCR9qsj8GpiUPqyekXQgtVYnPF8g11ihfFUzWs9cC/bp/BGzRw1fxP/ePykNzWDYPK+kt+q41cZX3Aycb26KiyPV3DFI2SILWfjZu4RV3QC4Xq3HYeKVovruHaoH3p5My/anObH152ysFV4px9wijxYtJKhaNAmT6EW2jBqjmLTiK3eXshJAx9q1oE560xoDpRVu9HqX7UwSIlwGxpM8zXbn/20nQDyMqHkEKvXkfTrelewAI00VROJdRX1x56nG2y2gQd/H4MPX/RlzGs7llkwLHuFP9YNGLi/4jksF1s930LyiwSYyuxIdvxWajBcRniQHShljcYriswH1VG417npSjMRxA74ibDEqvASVSBMBkuZFt7HbS/8DylkT1fCnYqwGXj6a8HvfYYAkNk6l5uqkWRdt4FSSyvhZLB/bzGiLcu8Y/VpYmgRcOIAUN4ppBTtuXAm2vVSm7HvTYHZTIcTL3y6u8ZUxiBnjYAxB1GjLdWyU47UdoFjqh5Tj/8OW8RcJIQ+NbpxSnK3s8EdxxUIeAsETuqsUnDPaqE7Q3hZYo/nfV+H+ODwSPywqGN8soASo/kg2NG4Ls+BMLOT9sPWacgJGEp5A/vShFcU29ZmF7TsdrrQvGX5uFlIh4TRYuI03lRiHriE5FJ2Gk/q2MZ3NVg+oT+vgNqFd+hTU+Aeoi+Cyno1GjP6AYwgQ79OYzOF1uzIoM7M+ldK/Romyi4EcrJQyeTngD6vIEyEdch0egiuhhRso6oN027OkJp5C5gTUIepHjCGrHkBDWZYASTtGMTzAQj1gEWy4jlQsVNkrrrmcDbaEvKEBlRXxDJ3mO7ZLjDH9AAAALElEQVR42gXBARIAEAgAwYuJignj/29ll1eNGwOPxuzJKUWuGinRhyy2ngT/PFwCGzfZF1oAAAAASUVORK5CYII=",
        5, 7,
        [255, 3, 8, 0, 19, 10, 11, 9, 10, 6, 0, 12, 7, 14, 17, 2, 2, 1, 19, 5, 8, 14, 1, 10, 7, 11, 1, 15, 16, 5, 17, 14, 0, 0, 9]);

    public static readonly (string Base64, int Height, int Width, byte[] Values) Palette4 = (
        "iVBORw0KGgoAAAANSUhEUgAAAAkAAAAEBAMAAACuIQj9AAAAMFBMVEUAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi+tl47vAAAAIUlEQVR4nGNwr2oKNWCYceLCogKG6nyp3QYM/lqMVx8AAG2YCSkbpIDiAAAAAElFTkSuQmCC",
        4, 9,
        [4, 7, 7, 10, 8, 2, 5, 5, 3, 9, 8, 12, 8, 13, 0, 10, 2, 7, 7, 11, 6, 15, 1, 10, 11, 11, 3, 4, 15, 2, 10, 0, 1, 13, 5, 14]);

    public static readonly (string Base64, int Height, int Width, byte[] Values) Grey = (
        "iVBORw0KGgoAAAANSUhEUgAAAAsAAAAGCAAAAAAwWTskAAAAU0lEQVR4nAFIALf/ATv2cO7kxVnenqmOAKB0FtnNQulxOxExBH4eyQ8N/S8LL4/PAk+pCjWMbn7OEQjQBOwHEWjg34ftVE9SAZzbV8UT4i31JT/SrJUgWQu6Y3AAAAAASUVORK5CYII=",
        6, 11,
        [59, 49, 161, 143, 115, 56, 145, 111, 13, 182, 68, 160, 116, 22, 217, 205, 66, 233, 113, 59, 17, 49, 30, 60, 223, 238, 230, 63, 24, 35, 82, 202, 153, 109, 229, 233, 35, 114, 173, 150, 241, 99, 210, 105, 89, 236, 253, 139, 107, 140, 19, 131, 183, 33, 115, 156, 119, 206, 147, 166, 136, 181, 170, 207, 14, 224]);
}
